"""The settings' JSON Schema, generated from hub/settings/: the chart's values.schema.json
and the tables of docs/configuration.md are what the generator makes now, and the schema
accepts and refuses what gpulab's own loader accepts and refuses."""

from __future__ import annotations

import copy
import inspect
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from gpulab.hub import settings_schema
from gpulab.hub.settings import SettingsError, load_settings
from gpulab.hub.settings import sections as settings_module

ROOT = Path(__file__).resolve().parents[2]
CHART_VALUES = ROOT / "helm" / "gpulab" / "values.yaml"
SCHEMA = settings_schema.settings_schema()
VALUES_SCHEMA = settings_schema.values_schema()


def schema_errors(doc: object, schema: dict = SCHEMA) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def loader_error(doc: dict, tmp_path: Path) -> str | None:
    path = tmp_path / "gpulab.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_settings(path, environ={})
    except SettingsError as e:
        return str(e)
    return None


def merged(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def test_the_chart_schema_and_the_docs_tables_are_current() -> None:
    stale = settings_schema.stale_files()
    assert stale == [], (
        f"generated from hub/settings/ but not current: {', '.join(stale)}; "
        f"run: {settings_schema.COMMAND}"
    )
    assert settings_schema.main(["--check"]) == 0


def test_a_setting_without_words_under_it_stops_the_generator() -> None:
    source = inspect.getsource(settings_module)
    doc = '    """The public port (the proxy\'s)."""\n'
    assert source.count(doc) == 1
    with pytest.raises(ValueError, match="hub.port: document the field"):
        settings_schema.settings_schema(source.replace(doc, ""))


def test_check_names_what_is_stale_and_write_makes_it_current(tmp_path: Path) -> None:
    for name in (settings_schema.VALUES_SCHEMA, settings_schema.CONFIGURATION_MD):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    docs = tmp_path / settings_schema.CONFIGURATION_MD
    text = docs.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `s3_prefix` |"))
    docs.write_text(text.replace(row + "\n", ""))  # as if a new setting came without docs
    (tmp_path / settings_schema.VALUES_SCHEMA).write_text("{}\n")

    assert settings_schema.stale_files(tmp_path) == [
        "helm/gpulab/values.schema.json",
        "docs/configuration.md: the `storage` table",
    ]
    settings_schema.stale_files(tmp_path, write=True)
    assert settings_schema.stale_files(tmp_path) == []
    assert docs.read_text() == (ROOT / settings_schema.CONFIGURATION_MD).read_text()


def test_every_setting_has_a_row_with_its_default() -> None:
    tables = settings_schema.docs_tables()
    assert "| `hub_port` | `8081` | Port of the hub's internal API" in tables["hub"]
    assert "| `slug` | (required) |" in tables["profiles"]
    assert "| `admin_users` | `[admin]` |" in tables["hub"]
    assert "[security.md](security.md#secrets)" in tables["storage"]
    for name, section in settings_schema._sections(SCHEMA).items():
        for field in section["properties"]:
            if name != settings_schema.TOP_LEVEL or field in ("backend", "data_root"):
                assert f"| `{field}` |" in tables[name], (name, field)


def test_the_schemas_are_valid_draft_07() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator.check_schema(VALUES_SCHEMA)
    assert VALUES_SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_the_charts_values_are_valid_and_their_settings_are_gpulabs(tmp_path: Path) -> None:
    values = yaml.safe_load(CHART_VALUES.read_text())
    assert schema_errors(values, VALUES_SCHEMA) == []
    assert schema_errors(values["config"]) == []
    assert loader_error(values["config"], tmp_path) is None
    # the chart runs the kubernetes backend, which needs the notebook image
    for bad, message in [
        ({"config": {"backend": "local"}}, "config.backend: const"),
        ({"config": {"kubernetes": {"image": ""}}}, "config.kubernetes.image: minLength"),
        ({"config": {"hub": {"prot": 1}}}, "config.hub: additionalProperties"),
        ({"config": {"storage": {"home_size": "big"}}}, "config.storage.home_size: pattern"),
    ]:
        validator = jsonschema.Draft7Validator(VALUES_SCHEMA)
        errors = [
            f"{'.'.join(map(str, e.absolute_path))}: {e.validator}"
            for e in validator.iter_errors(merged(values, bad))
        ]
        assert errors == [message]


SETTINGS_DOCUMENTS = [
    # tests/unit/test_settings.py's
    """
data_root: /srv/gpulab
hub: {port: 9000}
gpus: {ids: ["0", "1"], per_user: 1, groups: {students: 1}}
profiles:
  - {slug: small, gpus: 0}
  - {slug: big, display_name: Big box, gpus: 2, default: true, env: {OMP_NUM_THREADS: "8"}}
""",
    # tests/conftest.py's shared hub's
    """gpus: {ids: ["0", "1", "2"], per_user: 2, users: {lab: 4}, groups: {team: 1}}""",
    # docs/kubernetes.md's
    """
backend: kubernetes
kubernetes:
  image: registry.example.org/gpulab/notebook:0.1.0
  storage_class: ceph-rbd
  gpu_tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
storage:
  home_size: 20GiB
  s3_endpoint: http://rgw.ceph.svc:8080
  s3_admin_access_key_file: /etc/gpulab/s3-access
  s3_admin_secret_key_file: /etc/gpulab/s3-secret
profiles:
  - {slug: cpu, display_name: CPU only, default: true}
  - {slug: h100, display_name: 1 x H100, gpus: 1, gpu_type: NVIDIA-H100-80GB-HBM3, idle_return: 30m}
""",
    # every default, written out
    "{}",
]


@pytest.mark.parametrize("text", SETTINGS_DOCUMENTS)
def test_real_settings_documents_are_valid(text: str, tmp_path: Path) -> None:
    doc = yaml.safe_load(text)
    assert loader_error(doc, tmp_path) is None
    assert schema_errors(doc) == []


def test_the_defaults_in_the_schema_are_a_valid_document(tmp_path: Path) -> None:
    def defaults(schema: dict) -> dict:
        return {
            name: defaults(prop) if "properties" in prop else prop["default"]
            for name, prop in schema["properties"].items()
            if "default" in prop or "properties" in prop
        }

    doc = defaults(SCHEMA)
    assert doc["hub"]["port"] == 8000 and doc["profiles"][0]["slug"] == "cpu"
    assert schema_errors(doc) == []
    assert loader_error(doc, tmp_path) is None


# (document, whether gpulab takes it): the schema must agree with load_settings
AGREEMENT = [
    # the forms the loader coerces
    ("gpus: {ids: [0, 1]}", True),
    ("gpus: {ids: '0,1'}", True),
    ("gpus: {users: 'alice=3,bob=0'}", True),
    ("hub: {port: '8080', open_signup: 'yes'}", True),
    ("hub: {open_signup: 1}", True),
    ("profiles: [{slug: a, env: {OMP_NUM_THREADS: 8}}]", True),
    ("storage: {home_size: 10737418240, home_max_size: 1 TB, s3_quota: -1}", True),
    ("jobs: {restart_backoff: 3, stop_grace: 1.5m}", True),
    ("kubernetes: {uid: null, gid: none}", True),
    (
        "kubernetes: {gpu_tolerations: [{key: a, operator: Equal, value: b, tolerationSeconds: 5}]}",
        True,
    ),
    # unknown keys
    ("hub: {prot: 1}", False),
    ("gpu: {ids: [0]}", False),
    ("profiles: [{slug: a, gpu: 1}]", False),
    ("kubernetes: {gpu_tolerations: [{key: a, operater: Exists}]}", False),
    # wrong types
    ("hub: {port: eighty}", False),
    ("hub: {port: true}", False),
    ("hub: {open_signup: maybe}", False),
    ("hub: {admin_users: {alice: 1}}", False),
    ("hub: {ip: [a, b]}", False),
    ("hub: nope", False),
    ("gpus: {users: {alice: lots}}", False),
    ("gpus: {groups: 'students'}", False),
    ("storage: {home_size: 10 gigs}", False),
    ("storage: {s3_quota: -2}", False),
    ("jobs: {stop_grace: soon}", False),
    ("profiles: [{slug: a, idle_return: -5}]", False),
    ("profiles: [{display_name: no slug}]", False),
    ("profiles: [cpu]", False),
    ("kubernetes: {gpu_tolerations: [{operator: Maybe}]}", False),
    ("kubernetes: {gpu_tolerations: [{effect: NoSchedule, tolerationSeconds: soon}]}", False),
    # what settings._validate refuses beyond the types
    ("profiles: []", False),
    ("hub: {admin_users: []}", False),
    ("kubernetes: {gpu_tolerations: [a]}", False),
]


@pytest.mark.parametrize("text, valid", AGREEMENT)
def test_the_schema_agrees_with_the_loader(text: str, valid: bool, tmp_path: Path) -> None:
    doc = yaml.safe_load(text)
    refused = loader_error(doc, tmp_path)
    assert (refused is None) == valid, refused
    errors = schema_errors(doc)
    assert (errors == []) == valid, errors


def _doc_at(schema: dict, parts: list[str], value: object) -> object:
    """The smallest document that puts ``value`` at ``parts`` (``*``: a list item or a
    mapping's value), with the required keys of the objects on the way."""
    if not parts:
        return value
    head, rest = parts[0], parts[1:]
    if head != "*":
        return {head: _doc_at(schema["properties"][head], rest, value)}
    if "items" in schema:
        item = schema["items"]
        inner = _doc_at(item, rest, value)
        if isinstance(inner, dict):
            inner = {**{name: "a" for name in item.get("required", [])}, **inner}
        return [inner]
    return {"x": _doc_at(schema["additionalProperties"], rest, value)}


def _bound_cases() -> list[tuple[str, object, bool]]:
    cases = []
    for path, rule in settings_schema.CONSTRAINTS.items():
        if "minimum" in rule:
            cases += [(path, rule["minimum"], True), (path, rule["minimum"] - 1, False)]
        if "maximum" in rule:
            cases += [(path, rule["maximum"], True), (path, rule["maximum"] + 1, False)]
        for value in rule.get("enum", []):
            cases.append((path, value, True))
        if "enum" in rule:
            cases.append((path, "nope", False))
    return cases


@pytest.mark.parametrize("path, value, valid", _bound_cases())
def test_each_bound_in_the_schema_is_the_loaders(
    path: str, value: object, valid: bool, tmp_path: Path
) -> None:
    doc = _doc_at(SCHEMA, path.split("."), value)
    assert isinstance(doc, dict)
    doc = merged({"kubernetes": {"image": "registry.example/notebook"}}, doc)
    refused = loader_error(doc, tmp_path)
    assert (refused is None) == valid, (doc, refused)
    errors = schema_errors(doc)
    assert (errors == []) == valid, (doc, errors)
