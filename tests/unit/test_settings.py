"""Settings: the YAML file, GPULAB_* overrides, and clear errors for bad values."""

import pytest

from gpulab.hub.names import safe_name
from gpulab.hub.settings import SettingsError, load_settings
from gpulab.spawner import profiles
from gpulab.spawner.accounts import unix_name


def write(tmp_path, text):
    path = tmp_path / "gpulab.yaml"
    path.write_text(text)
    return path


def test_file_then_environment_overrides(tmp_path):
    path = write(
        tmp_path,
        """
data_root: /srv/gpulab
hub: {port: 9000}
gpus: {ids: ["0", "1"], per_user: 1, groups: {students: 1}}
profiles:
  - {slug: small, gpus: 0}
  - {slug: big, display_name: Big box, gpus: 2, default: true, env: {OMP_NUM_THREADS: "8"}}
""",
    )
    s = load_settings(
        path,
        environ={
            "GPULAB_HUB__PORT": "9100",
            "GPULAB_GPUS__IDS": "GPU-a, GPU-b,GPU-c",
            "GPULAB_GPUS__USERS": "alice=3,bob=0",
        },
    )
    assert str(s.data_path) == "/srv/gpulab"
    assert s.hub.port == 9100
    assert s.gpus.ids == ["GPU-a", "GPU-b", "GPU-c"]
    assert s.gpus.users == {"alice": 3, "bob": 0} and s.gpus.groups == {"students": 1}
    assert s.profile(None).slug == "big" and s.profile("small").display_name == "small"
    assert s.profile("big").env == {"OMP_NUM_THREADS": "8"}


@pytest.mark.parametrize(
    "text, env, message",
    [
        ("hub: {prot: 1}", {}, "unknown key(s) prot"),
        ("hub: {port: eighty}", {}, "hub.port: expected a whole number"),
        ("", {"GPULAB_HUB__OPEN_SIGNUP": "maybe"}, "expected true or false"),
        ("profiles: [{slug: a, gpus: -1}]", {}, "profiles.a.gpus: must be 0 or more"),
        ("profiles: [{slug: a}, {slug: a}]", {}, "duplicate slug(s) a"),
        ("profiles: []", {}, "at least one profile"),
        ("gpus: {ids: ['0', '0']}", {}, "listed twice"),
        ("gpus: {groups: {students: -2}}", {}, "must be 0 or more"),
        ("gpus: {kernel_checkpoint: cuda}", {}, "auto, driver or namespace, not 'cuda'"),
        ("backend: cloud", {}, "unknown backend 'cloud'"),
        ("- just\n- a list", {}, "must hold a mapping"),
        ("hub: [", {}, "not valid YAML"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, text, env, message):
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, text), environ=env)
    assert message in str(info.value)


def test_missing_settings_file_is_reported(tmp_path):
    with pytest.raises(SettingsError, match="cannot read settings file"):
        load_settings(environ={"GPULAB_CONFIG": str(tmp_path / "nope.yaml")})


def test_spawn_options_resolve_to_profile_and_count(tmp_path):
    s = load_settings(write(tmp_path, ""), environ={})
    assert profiles.resolve(s, {}).profile.slug == "cpu"
    req = profiles.resolve(s, {"profile": "gpu-1", "gpus": 2})
    assert (req.profile.slug, req.gpus) == ("gpu-1", 2)
    for bad, message in [
        ({"profile": 3}, "profile must be a profile name"),
        ({"profile": "gpu-9"}, "unknown profile 'gpu-9'; known profiles: cpu, gpu-1, gpu-2"),
        ({"gpus": -1}, "0 or more"),
        ({"gpus": True}, "0 or more"),
        ({"gpu": 1}, "unknown server option(s): gpu"),
        ([1], "must be a JSON object"),
    ]:
        with pytest.raises(profiles.BadOptions) as info:
            profiles.resolve(s, bad)
        assert message in str(info.value)


def test_unix_names_are_safe_and_distinct():
    assert unix_name("gl-", "alice") == "gl-alice"
    odd = [
        safe_name(n) for n in ("a.b@example.org", "a-b@example.org", "A very long user name indeed")
    ]
    assert len(set(odd)) == 3
    for name in odd:
        assert len(name) <= 20 and all(c.isalnum() or c in "-_" for c in name)
