"""Secrets an admin writes down are never readable by the users of the machine.

The attack: the S3 admin keys sat in a settings file an admin made with the usual mode
0644, so any user's shell could read them, and with them every user's bucket. The hub
now refuses to start (and ``gpulab doctor`` fails) while a file that holds a secret can
be read or changed by another account; secrets can live in root-only ``*_file`` files.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from browsing import login
from hubfixture import BIN, free_port

KEY = "SECRETKEY" + "x" * 31


def settings_file(root: Path, mode: int, **storage) -> Path:
    settings = {
        "data_root": str(root / "data"),
        "hub": {
            "ip": "127.0.0.1",
            "port": free_port(),
            "hub_port": free_port(),
            "proxy_api_port": free_port(),
        },
        "storage": storage,
    }
    path = root / "gpulab.yaml"
    path.write_text(yaml.safe_dump(settings))
    path.chmod(mode)
    return path


def run_as_nobody(*command: str) -> subprocess.CompletedProcess:
    nobody = pwd.getpwnam("nobody")
    return subprocess.run(
        command, user=nobody.pw_uid, group=nobody.pw_gid, capture_output=True, text=True, timeout=30
    )


def gpulab_up(config: Path) -> tuple[int | None, str]:
    """``gpulab up`` with these settings: its exit code, or None if it went on to run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULAB_")}
    proc = subprocess.Popen(
        [str(BIN / "gpulab"), "up"],
        env={**env, "GPULAB_CONFIG": str(config)},
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=60)
        return proc.returncode, out
    except subprocess.TimeoutExpired:  # the hub started: stop it and all it ran
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        return None, out


@pytest.fixture
def etc_dir():
    """A folder every account can enter, as an admin's /etc/gpulab is."""
    path = Path(tempfile.mkdtemp(prefix="gpulab-etc-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_gpulab_up_refuses_a_settings_file_others_can_read(etc_dir):
    config = settings_file(etc_dir, 0o644, s3_admin_access_key="ACCESS", s3_admin_secret_key=KEY)
    # what the attacker did: read the admin keys from their own shell
    assert KEY in run_as_nobody("cat", str(config)).stdout

    code, out = gpulab_up(config)
    assert code == 1, out
    assert str(config) in out and "storage.s3_admin_secret_key" in out, out
    assert f"chmod 600 {config}" in " ".join(out.split()), out
    assert "Traceback" not in out

    # the fix it names works: the file is the hub's alone, and the check passes
    config.chmod(0o600)
    assert KEY not in run_as_nobody("cat", str(config)).stdout
    doctor = subprocess.run(
        [str(BIN / "gpulab"), "doctor"],
        env={**os.environ, "GPULAB_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "secrets" in doctor.stdout and "no other account can read" in doctor.stdout, (
        doctor.stdout
    )


def test_secrets_from_root_only_files(make_hub, tmp_path):
    password = tmp_path / "admin-password"
    password.write_text("a-long-admin-password-from-a-file\n")
    password.chmod(0o600)
    hub = make_hub({"hub": {"admin_password": "", "admin_password_file": str(password)}})
    hub.start()
    assert login(hub, "admin", "a-long-admin-password-from-a-file").login_status == 302

    # a secret file others can read: the hub does not start, and says which and why
    hub.stop()
    password.chmod(0o644)
    assert hub.launch().wait(120) == 1, hub.log_tail()
    out = " ".join(hub.log_tail(200).split())
    assert f"{password} holds hub.admin_password and is mode 0644" in out, out
    assert "Traceback" not in out

    doctor = subprocess.run(
        [str(BIN / "gpulab"), "doctor"],
        env={**hub.env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=hub.data_root,
    )
    assert doctor.returncode == 1
    row = [line for line in doctor.stdout.splitlines() if "secrets" in line]
    assert row and "FAIL" in row[0], doctor.stdout


def test_both_a_secret_and_its_file_is_a_clear_error(tmp_path):
    password = tmp_path / "p"
    password.write_text("x" * 20)
    password.chmod(0o600)
    config = settings_file(tmp_path, 0o600)
    raw = yaml.safe_load(config.read_text())
    raw["hub"].update(admin_password="inline-one", admin_password_file=str(password))
    config.write_text(yaml.safe_dump(raw))
    code, out = gpulab_up(config)
    assert code is not None and code != 0, out
    assert "hub.admin_password and hub.admin_password_file are both set" in " ".join(out.split())
    assert "Traceback" not in out
