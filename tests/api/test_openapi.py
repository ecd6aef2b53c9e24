"""The gpulab REST API against its OpenAPI 3.1 document (hub/api/openapi.yaml).

- the document lists every route of every ``default_handlers`` in hub/api, and only
  methods the handlers have;
- it is valid OpenAPI 3.1, and the hub serves it at /hub/api/gpulab/openapi.json;
- schemathesis, run against a live hub with a user's token, finds no server error and
  no answer that breaks the document.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import requests
import yaml
from openapi_spec_validator import validate
from tornado.web import RequestHandler

import gpulab.hub.api as api_package
from hubfixture import REPO

DOCUMENT = REPO / "hub" / "api" / "openapi.yaml"
METHODS = ("get", "post", "put", "patch", "delete")
ST = Path(sys.executable).with_name("st")


def document() -> dict:
    return yaml.safe_load(DOCUMENT.read_text())


def routes() -> list[tuple[str, type]]:
    """(URL regex under /hub/api, handler) of every default_handlers in hub/api."""
    found = []
    for info in pkgutil.iter_modules(api_package.__path__):
        module = importlib.import_module(f"{api_package.__name__}.{info.name}")
        for pattern, handler in getattr(module, "default_handlers", []):
            assert pattern.startswith("/api/"), pattern
            found.append((pattern[len("/api") :], handler))
    return found


def concrete(path: str) -> str:
    """A URL of a documented path, with a value for each parameter."""
    return re.sub(r"\{(\w+)\}", lambda m: "1" if m.group(1) == "version" else "x1", path)


def test_the_document_lists_every_route_and_only_what_handlers_do():
    paths = document()["paths"]
    table = routes()
    assert len(table) >= 20  # every module's routes were found
    for pattern, handler in table:
        documented = [p for p in paths if re.fullmatch(pattern, concrete(p))]
        assert documented, f"{pattern} ({handler.__name__}) is not in {DOCUMENT.name}"
    for path, operations in paths.items():
        handlers = [h for pattern, h in table if re.fullmatch(pattern, concrete(path))]
        assert handlers, f"{path} is documented but no handler serves it"
        for method in operations:
            assert method in METHODS, f"{path}: {method}"
            assert any(
                getattr(h, method) is not getattr(RequestHandler, method) for h in handlers
            ), f"{method.upper()} {path} is documented but its handler has no {method}"


def test_the_document_is_valid_openapi_3_1():
    doc = document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    # every operation says what its errors look like: {"status", "message"} or TF Serving's
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            assert "default" in op["responses"] or path.endswith("openapi.json"), (method, path)


def test_the_hub_serves_the_document_without_a_token(hub):
    r = requests.get(hub.api("/gpulab/openapi.json"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == document()


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(hub, tmp_path):
    tester = hub.create_user("fuzzer")
    report = tmp_path / "report.xml"
    run = subprocess.run(
        [
            str(ST),
            "run",
            hub.api("/gpulab/openapi.json"),
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance",
            "--header",
            f"Authorization: token {tester.token}",
            "--max-examples",
            "25",
            "--generation-deterministic",
            "--generation-with-security-parameters",
            "false",
            "--phases",
            "examples,coverage,fuzzing",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--report",
            "junit",
            "--report-junit-path",
            str(report),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,  # its own state folder goes there, not into the checkout
    )
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    failures = re.findall(r"<(failure|error)\b", report.read_text())
    assert run.returncode == 0 and not failures, (
        f"schemathesis: rc={run.returncode}, {len(failures)} failures\n"
        f"{run.stdout[-6000:]}\n{run.stderr[-2000:]}\n{hub.log_tail(20)}"
    )
    # it did call the API, and every case passed (a run that tests nothing passes too)
    assert re.search(r"\b([1-9]\d{2,}) generated, \1 passed", run.stdout), run.stdout[-2000:]
