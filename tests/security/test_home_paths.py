"""Issue 20, finding 6: the hub (root) must never block on, follow or read through a path
a user controls in their own home.

The attacker is a second user with a shell as their own unix account (here: processes
run as that account). They put FIFOs where the hub writes a model's config, turn their
job's log into links to root's files, a FIFO or /dev/zero, and swap folders for links;
another user's calls must still be answered at once, and nothing of a file the attacker
could not read comes back through the hub's API.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import requests

from hubfixture import export_line, wait_for

PROMPT = 10
"""Seconds another user waits for an answer: far more than a free hub needs."""
POOL = min(32, (os.cpu_count() or 1) + 4)
"""The hub's default thread pool (asyncio.to_thread): the attacker fills it."""


def account(hub, name: str):
    from gpulab.spawner.accounts import ensure_account

    return ensure_account(hub.unix_prefix, name, hub.data_root)


def as_user(acct, code: str) -> str:
    """Run Python ``code`` as the user's unix account in their home: their shell."""
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        user=acct.uid,
        group=acct.gid,
        extra_groups=[],
        cwd=str(acct.home),
        env={"PATH": os.environ["PATH"], "HOME": str(acct.home)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def prompt(call, what: str) -> requests.Response:
    """``call()`` (a request made with ``timeout=PROMPT``); a hang fails the test at once."""
    try:
        return call()
    except requests.Timeout:
        raise AssertionError(f"the hub froze: {what} got no answer within {PROMPT}s") from None


def submit(user, spec: dict) -> dict:
    r = user.session.post(user.hub.api("/gpulab/jobs"), json=spec, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()


def wait_job(user, name: str) -> dict:
    def ended():
        r = user.session.get(user.hub.api(f"/gpulab/jobs/{name}"), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["state"] in ("succeeded", "failed", "cancelled") and r.json()

    return wait_for(ended, 120, f"job {name} to end")


def job_log(user, name: str, **params) -> requests.Response:
    return prompt(
        lambda: user.session.get(
            user.hub.api(f"/gpulab/jobs/{name}/logs"), params=params, timeout=PROMPT
        ),
        f"{user.name}'s log of job {name}",
    )


def storage(user) -> requests.Response:
    return prompt(
        lambda: user.session.get(user.hub.api("/gpulab/storage"), timeout=PROMPT),
        f"{user.name}'s storage GET",
    )


def test_fifos_in_a_model_folder_do_not_freeze_the_hub_for_others(hub):
    victim = hub.create_user("hp-victim")
    mallory = hub.create_user("hp-mallory")
    victim_acct, acct = account(hub, victim.name), account(hub, mallory.name)
    submit(victim, {"name": "hello", "command": ["python", "-c", "print('victim says hi')"]})
    assert wait_job(victim, "hello")["state"] == "succeeded"

    export_line(
        acct.home / "models/line/1", 0.5, 2.0, user=acct.uid, group=acct.gid,
        env={"PATH": os.environ["PATH"], "HOME": str(acct.home), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    # FIFOs where the hub puts the model's config and the file it writes first (its
    # name has the hub's pid, which anyone reads in /proc)
    folder = acct.home / ".gpulab/models/line"
    fifos = [folder / "models.config", folder / f".models.config.{hub.proc.pid}.tmp"]
    as_user(
        acct,
        f"""
        import os
        os.makedirs({str(folder)!r}, exist_ok=True)
        for path in {[str(f) for f in fifos]!r}:
            os.mkfifo(path)
        """,
    )
    answers: dict[str, object] = {}

    def attack(key: str, method: str, path: str, body: dict) -> None:
        try:
            answers[key] = mallory.session.request(
                method, hub.api(path), json=body, timeout=(5, PROMPT)
            )
        except requests.Timeout:
            answers[key] = "no answer"

    spec = {"name": "line", "base_path": "models/line"}
    deploying = threading.Thread(target=attack, args=("deploy", "POST", "/gpulab/models", spec))
    deploying.start()
    wait_for(
        lambda: mallory.session.get(hub.api("/gpulab/models/line"), timeout=5).ok,
        30, "the deployment to be recorded",
    )  # fmt: skip
    # one config write per update: enough of them to take every thread of the hub's pool
    updates = [
        threading.Thread(
            target=attack, args=(f"update-{i}", "PATCH", "/gpulab/models/line", {"latest": 1})
        )
        for i in range(POOL)
    ]
    for t in updates:
        t.start()
    try:
        for t in [deploying, *updates]:
            t.join()
        # the other user's calls are answered at once, whatever the attacker does
        r = storage(victim)
        assert r.status_code == 200, r.text
        assert r.json()["volume"]["name"] == str(victim_acct.home)
        r = job_log(victim, "hello", replica="worker-0")
        assert r.status_code == 200 and "victim says hi" in r.text, r.text

        # the attacker's own calls got answers too: the config replaced the FIFO
        assert answers["deploy"] != "no answer", "the deploy hung on the FIFO"
        assert answers["deploy"].status_code == 201, answers["deploy"].text
        hung = [k for k, v in answers.items() if v == "no answer"]
        assert not hung, f"hung on the FIFO: {hung}"
        assert {answers[f"update-{i}"].status_code for i in range(POOL)} == {200}
        config = folder / "models.config"
        st = config.lstat()
        assert config.is_file() and not config.is_symlink(), "the FIFO is still there"
        assert (st.st_uid, st.st_mode & 0o777) == (acct.uid, 0o600)
        assert 'name: "line"' in config.read_text()

        def serving():
            r = mallory.session.get(hub.api("/gpulab/models/line"), timeout=PROMPT)
            assert r.json()["state"] != "failed", r.text
            return r.json()["state"] == "available"

        wait_for(serving, 120, "the model to serve from the config that replaced the FIFO")

        # a folder where the config goes: a clear message, not a traceback
        as_user(
            acct,
            f"""
            import os
            os.rename({str(config)!r}, {str(folder / "kept.config")!r})
            os.mkdir({str(config)!r})
            """,
        )
        r = prompt(
            lambda: mallory.session.patch(
                hub.api("/gpulab/models/line"), json={"latest": 1}, timeout=PROMPT
            ),
            "an update with a folder as the config",
        )
        assert r.status_code == 409, r.text
        assert "~/.gpulab/models/line/models.config" in r.json()["message"], r.text
        assert "folder" in r.json()["message"], r.text
    finally:
        # release any hub thread still blocked writing into a FIFO (the old hub's)
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
            except OSError:
                pass
        mallory.session.delete(hub.api("/gpulab/models/line"), timeout=60)


def test_a_log_swapped_for_links_fifos_or_devices_shows_nothing_else(hub):
    victim = hub.create_user("hp-victim2")
    mallory = hub.create_user("hp-mallory2")
    acct = account(hub, mallory.name)
    secret_job = submit(victim, {"name": "secret", "command": ["python", "-c", "print('s3cr3t')"]})
    own = submit(mallory, {"name": "mine", "command": ["python", "-c", "print('own output')"]})
    assert wait_job(victim, "secret")["state"] == "succeeded"
    assert wait_job(mallory, "mine")["state"] == "succeeded"
    assert "own output" in job_log(mallory, "mine", replica="worker-0").text

    folder = acct.home / f".gpulab/jobs/{own['id']}-mine"
    log = folder / "worker-0.log"
    victim_folder = account(hub, victim.name).home / f".gpulab/jobs/{secret_job['id']}-secret"
    token = (hub.data_root / "cli-token").read_text().strip()
    shadow = Path("/etc/shadow").read_text()
    swaps = {
        "a link to the hub's admin token": f"os.symlink({str(hub.data_root / 'cli-token')!r}, "
        f"{str(log)!r})",
        "a link to /etc/shadow": f"os.symlink('/etc/shadow', {str(log)!r})",
        "a link to /dev/zero": f"os.symlink('/dev/zero', {str(log)!r})",
        "a FIFO": f"os.mkfifo({str(log)!r})",
        "a folder": f"os.mkdir({str(log)!r})",
        # the job's folder a link to the other user's job folder (same log name)
        "its folder a link to another user's": f"os.rename({str(folder)!r}, "
        f"{str(folder) + '.away'!r}); os.symlink({str(victim_folder)!r}, {str(folder)!r})",
    }
    for what, swap in swaps.items():
        as_user(
            acct,
            f"""
            import os, shutil
            if os.path.islink({str(folder)!r}):
                os.unlink({str(folder)!r}); os.rename({str(folder) + ".away"!r}, {str(folder)!r})
            if os.path.isdir({str(log)!r}) and not os.path.islink({str(log)!r}):
                os.rmdir({str(log)!r})
            elif os.path.lexists({str(log)!r}):
                os.unlink({str(log)!r})
            {swap}
            """,
        )
        for params in ({"replica": "worker-0"}, {"replica": "worker-0", "follow": 1}):
            r = job_log(mallory, "mine", **params)
            assert r.status_code in (200, 404), (what, r.text)
            assert token not in r.text, f"{what}: the admin token leaked"
            assert "root:" not in r.text and shadow[:20] not in r.text, f"{what}: shadow leaked"
            assert "s3cr3t" not in r.text, f"{what}: another user's log leaked"
            assert "\0" not in r.text, f"{what}: read a device"


@pytest.mark.parametrize("kind", ["hard link", "link in the path"])
def test_home_reads_refuse_what_the_user_could_not_read(tmp_path, kind):
    """Below the API: ``homefs`` reads only the user's own regular files. A hard link to
    root's file is what a user makes where fs.protected_hardlinks is 0 (not here)."""
    from gpulab.hub import homefs

    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("root only")
    os.chmod(secret, 0o600)
    user_uid = 65534
    os.chown(home, user_uid, user_uid)
    os.chown(home / "logs", user_uid, user_uid)
    if kind == "hard link":
        os.link(secret, home / "logs/out.log")
    else:  # a file of the user's, but outside the home: a link on the way is not followed
        (tmp_path / "outside").mkdir()
        (tmp_path / "outside/out.log").write_text("root only")
        os.chown(tmp_path / "outside/out.log", user_uid, user_uid)
        os.rmdir(home / "logs")
        os.symlink(tmp_path / "outside", home / "logs")
    assert homefs.read(home, "logs/out.log", owner=user_uid) == b""
    # the user's own file is read
    os.unlink(home / "logs/out.log") if kind == "hard link" else os.unlink(home / "logs")
    (home / "logs").mkdir(exist_ok=True)
    (home / "logs/out.log").write_text("their own")
    os.chown(home / "logs/out.log", user_uid, user_uid)
    assert homefs.read(home, "logs/out.log", owner=user_uid) == b"their own"
