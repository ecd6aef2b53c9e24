"""One user's storage operations never hold up anyone else's, and root never copies into
a home while a process of its owner could race the copy."""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time

import pytest

from gpulab.hub.names import home_name
from gpulab.hub.storage import StorageError
from gpulab.hub.storage.images import run_watched
from hubfixture import wait_for


def snapshot(user, name: str, timeout: float = 120):
    return user.session.post(
        user.hub.api("/gpulab/storage/volume/snapshots"), json={"name": name}, timeout=timeout
    )


def test_a_wait_for_a_busy_home_is_bounded_and_holds_up_no_one_else(hub):
    alice = hub.create_user("alice")
    bob = hub.create_user("bob")
    for user in (alice, bob):
        assert user.spawn(profile="cpu").status_code in (201, 202)
    assert snapshot(alice, "a0").status_code == 201  # her home's lock file is made
    # a long operation on her home holds its lock (root's CLI here, another process)
    lock = open(hub.data_root / "volumes" / f"{home_name(hub.data_root, 'alice')}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        waiting = {}
        blocked = threading.Thread(target=lambda: waiting.update(r=snapshot(alice, "a1")))
        blocked.start()
        time.sleep(0.5)  # let Alice's call reach the lock first (the check below waits anyway)
        started = time.monotonic()
        r = snapshot(bob, "b1", timeout=20)
        assert r.status_code == 201, r.text
        assert time.monotonic() - started < 15
        # Alice's own call waits a bounded time, then says why: no thread is held for good
        blocked.join(timeout=60)
        assert not blocked.is_alive()
        assert waiting["r"].status_code == 409, waiting["r"].text
        assert "still running" in waiting["r"].json()["message"]
    finally:
        lock.close()
    assert snapshot(alice, "a2").status_code == 201


def test_no_rollback_while_a_process_of_the_owner_runs(hub):
    alice = hub.create_user("alice")
    assert alice.spawn(profile="cpu").status_code in (201, 202)
    assert snapshot(alice, "s1").status_code == 201
    alice.stop()
    job = {"name": "racer", "command": ["python", "-c", "import time; time.sleep(600)"]}
    r = alice.session.post(hub.api("/gpulab/jobs"), json=job, timeout=30)
    assert r.status_code == 201, r.text
    wait_for(
        lambda: (
            alice.session.get(hub.api("/gpulab/jobs/racer"), timeout=30).json()["state"]
            == "running"
        ),
        60,
        "the job to run",
    )
    rollback = hub.api("/gpulab/storage/volume/snapshots/s1/rollback")
    r = alice.session.post(rollback, json={}, timeout=60)
    assert r.status_code == 409, r.text
    assert "jobs" in r.json()["message"]

    r = alice.session.post(hub.api("/gpulab/jobs/racer/cancel"), json={}, timeout=60)
    assert r.status_code == 200, r.text
    wait_for(lambda: not hub.unix_pids("alice"), 60, "Alice's processes to end")
    r = alice.session.post(rollback, json={}, timeout=120)
    assert r.status_code == 200, r.text


def test_a_copy_that_waits_on_a_named_pipe_is_ended():
    folder = tempfile.mkdtemp()
    pipe = os.path.join(folder, "pipe")
    os.mkfifo(pipe)
    started = time.monotonic()
    with pytest.raises(StorageError, match="made no progress for 2s"):
        run_watched(["cat", pipe], "a copy", stall=2)
    assert time.monotonic() - started < 30
