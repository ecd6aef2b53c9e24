"""``gpulab doctor``: check this machine: proxy, GPUs, data root, Ceph, hub."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.table import Table

from gpulab.spawner.backend import backend_for

from ..secretfiles import exposed_secrets
from ..settings import Settings, config_path
from .api import ClientError, GpulabClient
from .output import console


def add_parsers(sub) -> None:
    sub.add_parser("doctor", help="check this machine: proxy, GPUs, data root, Ceph, hub")


def _check_proxy() -> tuple[str, str]:
    from ..hubconfig import proxy_command

    cmd = proxy_command()
    if not shutil.which(cmd[0]):
        return "FAIL", "configurable-http-proxy not found (npm install configurable-http-proxy)"
    try:
        out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "FAIL", f"{cmd[0]} does not run: {e}"
    if out.returncode != 0:
        return "FAIL", f"{cmd[0]} --version failed: {out.stderr.strip()[:200]}"
    return "OK", f"configurable-http-proxy {out.stdout.strip()} ({cmd[0]})"


def _check_data_root(settings: Settings) -> tuple[str, str]:
    data = settings.data_path
    try:
        data.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data):
            pass
    except OSError as e:
        return "FAIL", f"{data} is not writable: {e.strerror}"
    free = shutil.disk_usage(data).free / 2**30
    return ("OK" if free > 1 else "WARN"), f"{data} writable, {free:.1f} GiB free"


def _check_privilege() -> tuple[str, str]:
    if os.geteuid() == 0:
        return "OK", "root: each user's server runs as their own unix account"
    return "WARN", "not root: single-user/dev mode, no isolation between hub users"


def _check_server_command() -> tuple[str, str]:
    """User servers run as other accounts: they must be able to run this environment."""
    singleuser = Path(sys.prefix) / "bin" / "jupyterhub-singleuser"
    if not singleuser.exists():
        return "FAIL", f"{singleuser} is missing (reinstall gpulab)"
    if os.geteuid() != 0:
        return "OK", f"{singleuser}"
    r = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(singleuser), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        return "FAIL", (
            f"other accounts cannot run {singleuser}; install gpulab where every "
            "user can read it (not under /root)"
        )
    return "OK", f"{singleuser} runs for other accounts"


def _check_ceph(settings: Settings) -> tuple[str, str]:
    st = settings.storage
    if not st.ceph_conf and not st.s3_endpoint:
        return "OK", "not configured (no RBD volumes, no per-user S3)"
    details, result = [], "OK"
    if st.ceph_conf:
        from ..storage import StorageError
        from ..storage.rbd import RbdVolumes, answers_without_a_key

        try:
            volumes = RbdVolumes(
                st.ceph_conf,
                st.rbd_pool,
                connect_timeout=5,
                client=st.ceph_client,
                keyring=st.ceph_keyring,
            )
            volumes.exists("gpulab-doctor")
            volumes.close()
            details.append(f"RBD pool {st.rbd_pool} reachable")
            if answers_without_a_key(st.ceph_conf):
                result = "FAIL"
                details.append(
                    "Ceph lets in clients without a key (auth none): every account can read "
                    "every object and S3 secret; turn cephx on (docs/storage.md)"
                )
        except StorageError as e:
            result = "FAIL"
            details.append(str(e))
    if st.s3_endpoint:
        import requests

        try:
            requests.get(st.s3_endpoint, timeout=5)
            details.append(f"S3 answering at {st.s3_endpoint}")
        except requests.RequestException as e:
            result = "FAIL"
            details.append(f"S3 at {st.s3_endpoint} unreachable ({type(e).__name__})")
    return result, "; ".join(details)


def _check_registry(settings: Settings) -> tuple[str, str]:
    """Where environment snapshots go: the configured registry answers, or the embedded
    one can be started."""
    s = settings.environments
    if s.registry:
        from ..environments.registry import Registry, RegistryError

        try:
            Registry(s.registry, s.registry_username, s.registry_password, timeout=5).ping()
        except RegistryError as e:
            return "FAIL", str(e)
        return "OK", f"answering at {s.registry}"
    import shutil

    if shutil.which("docker-registry") is None:
        return "WARN", (
            "environments.registry is not set and docker-registry is not installed: "
            "environment snapshots fail (apt-get install docker-registry)"
        )
    from ..procinfo import live_args

    pid_file = settings.data_path / "registry" / "registry.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        pid = 0
    state = (
        f"running (pid {pid})" if pid and live_args(pid) else "started by the hub when first needed"
    )
    return "OK", f"embedded: Debian's docker-registry on loopback, {state}"


def _check_secrets(settings: Settings) -> tuple[str, str]:
    found = exposed_secrets(settings, config_path())
    if not found:
        return "OK", "no other account can read or change the hub's secrets"
    # on Kubernetes the files are in the hub's pod, which no user shares
    return ("FAIL" if backend_for(settings).shares_machine else "WARN"), "; ".join(found)


def _check_hub(settings: Settings) -> tuple[str, str]:
    client = GpulabClient.from_environment(settings=settings)
    try:
        version = client.request("GET", "/")["version"]
    except ClientError as e:
        return "WARN", f"hub not answering at {client.api_url} ({e})"
    return "OK", f"JupyterHub {version} answering at {client.api_url}"


def cmd_doctor(args, settings: Settings) -> int:
    checks = [
        ("privileges", _check_privilege()),
        ("secrets", _check_secrets(settings)),
        ("data root", _check_data_root(settings)),
        ("proxy", _check_proxy()),
        ("user servers", _check_server_command()),
        *backend_for(settings).doctor(),
        ("Ceph", _check_ceph(settings)),
        ("image registry", _check_registry(settings)),
        ("hub", _check_hub(settings)),
    ]
    table = Table(title="gpulab doctor", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    colour = {"OK": "green", "WARN": "yellow", "FAIL": "red"}
    for name, (result, detail) in checks:
        table.add_row(name, f"[{colour[result]}]{result}[/{colour[result]}]", detail)
    console.print(table)
    return 1 if any(result == "FAIL" for _, (result, _) in checks) else 0


COMMANDS = {"doctor": cmd_doctor}
