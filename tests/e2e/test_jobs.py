"""Training jobs on the local backend, through a real hub: real TensorFlow and PyTorch
processes on loopback, run as the user's unix account, with GPUs from the ledger."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from hubfixture import wait_for

TF_TRAIN = textwrap.dedent(
    """
    import json, os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    config = json.loads(os.environ["TF_CONFIG"])
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    print("workers", strategy.num_replicas_in_sync, "task", config["task"], flush=True)

    def data():
        x = tf.random.stateless_uniform((256, 1), seed=(1, 2))
        y = 2.0 * x + 1.0
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(32)

    with strategy.scope():
        w = tf.Variable(0.0)
        b = tf.Variable(0.0)

    batches = iter(strategy.experimental_distribute_dataset(data()))

    @tf.function
    def step(x, y):
        def replica(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((w * x + b - y) ** 2)
            gw, gb = tape.gradient(loss, [w, b])
            return loss, gw, gb
        loss, gw, gb = (
            strategy.reduce("mean", v, axis=None) for v in strategy.run(replica, args=(x, y))
        )
        w.assign_sub(0.5 * gw)
        b.assign_sub(0.5 * gb)
        return loss

    losses = [float(step(*next(batches))) for _ in range(40)]
    print("loss first", losses[0], "last", losses[-1], flush=True)
    print(f"gpulab-metric: loss={losses[-1]}")
    """
)

TORCH_ALLREDUCE = textwrap.dedent(
    """
    import os
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    print(f"rank {rank} of {dist.get_world_size()} local {os.environ['LOCAL_RANK']} sum {t.item()}")
    dist.destroy_process_group()
    """
)


def home_of(hub, name: str):
    from gpulab.spawner.accounts import ensure_account

    return ensure_account(hub.unix_prefix, name, hub.data_root)


def put_file(hub, name: str, path: str, text: str) -> None:
    """Write a file into the user's home, owned by them (as they would from JupyterLab)."""
    account = home_of(hub, name)
    target = account.home / path
    for parent in reversed(target.relative_to(account.home).parents[:-1]):
        folder = account.home / parent
        if not folder.exists():
            folder.mkdir()
            os.chown(folder, account.uid, account.gid)
    target.write_text(text)
    os.chown(target, account.uid, account.gid)


def submit(user, spec: dict, expect: int = 201) -> dict:
    r = user.session.post(user.hub.api("/gpulab/jobs"), json=spec, timeout=30)
    assert r.status_code == expect, r.text
    return r.json()


def job(user, name: str) -> dict:
    r = user.session.get(user.hub.api(f"/gpulab/jobs/{name}"), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_job(user, name: str, states=("succeeded", "failed", "cancelled"), timeout=180) -> dict:
    return wait_for(
        lambda: (j := job(user, name))["state"] in states and j, timeout, f"job {name} in {states}"
    )


def wait_sweep(user, name: str, timeout: float = 120) -> dict:
    """The sweep once it no longer runs."""

    def finished():
        model = user.session.get(user.hub.api(f"/gpulab/sweeps/{name}"), timeout=30).json()
        return model["state"] != "running" and model

    return wait_for(finished, timeout, f"sweep {name} to finish")


def logs(user, name: str, replica: str, follow: bool = False) -> str:
    r = user.session.get(
        user.hub.api(f"/gpulab/jobs/{name}/logs"),
        params={"replica": replica, "follow": int(follow)},
        timeout=180,
    )
    assert r.status_code == 200, r.text
    return r.text


def test_tensorflow_multiworker_job_trains(hub):
    alice = hub.create_user("alice")
    put_file(hub, "alice", "mnist/train.py", TF_TRAIN)
    submitted = submit(
        alice,
        {
            "name": "tf-mwms",
            "framework": "tensorflow",
            "script": "train.py",
            "workdir": "mnist",
            "replicas": {"worker": {"count": 2}},
        },
    )
    assert submitted["state"] in ("queued", "starting", "running")
    assert [r["name"] for r in submitted["replicas"]] == ["worker-0", "worker-1"]
    # follow the chief's log while it runs: the stream ends when the job does
    followed = logs(alice, "tf-mwms", "worker-0", follow=True)
    done = wait_job(alice, "tf-mwms")
    assert done["state"] == "succeeded", (done["message"], logs(alice, "tf-mwms", "worker-1"))
    assert "workers 2" in followed
    first, last = (float(v) for v in followed.split("loss first ")[1].split()[0:3:2])
    assert last < first / 10, followed
    assert done["metrics"]["loss"] == pytest.approx(last)
    addresses = {r["address"] for r in done["replicas"]}
    assert len(addresses) == 2 and all(a.startswith("127.0.0.1:") for a in addresses)
    # worker 0 decides; worker 1 finished too, or was stopped as the job ended
    states = {r["name"]: r["state"] for r in done["replicas"]}
    assert states["worker-0"] == "succeeded" and states["worker-1"] in ("succeeded", "stopped")
    # the logs stay on the home, the user's own
    log_file = home_of(hub, "alice").home / f".gpulab/jobs/{done['id']}-tf-mwms/worker-1.log"
    assert "workers 2" in log_file.read_text()
    assert log_file.stat().st_uid == home_of(hub, "alice").uid


def test_pytorch_job_all_reduces_and_holds_gpus_from_the_ledger(hub):
    bob = hub.create_user("bob")
    put_file(hub, "bob", "allreduce.py", TORCH_ALLREDUCE)
    probe = (
        "import os, pwd; print('user', pwd.getpwuid(os.getuid()).pw_name, "
        "'gpus', repr(os.environ['CUDA_VISIBLE_DEVICES']))"
    )
    put_file(hub, "bob", "probe.py", probe + "\nexec(open('allreduce.py').read())\n")
    submit(
        bob,
        {
            "name": "ddp",
            "framework": "pytorch",
            "script": "probe.py",
            "replicas": {"worker": {"count": 2, "gpus": 1}},
        },
    )
    running = wait_for(
        lambda: (j := job(bob, "ddp"))["state"] != "queued" and j, 60, "the job to be scheduled"
    )
    assert running["gpus"] == 2
    done = wait_job(bob, "ddp")
    assert done["state"] == "succeeded", done["message"]
    out = [logs(bob, "ddp", f"worker-{i}") for i in range(2)]
    account = home_of(hub, "bob").name
    granted = []
    for rank, text in enumerate(out):
        assert f"rank {rank} of 2 local 0 sum 3.0" in text, text
        assert f"user {account}" in text
        gpus = [r for r in done["replicas"] if r["name"] == f"worker-{rank}"][0]["gpus"]
        assert len(gpus) == 1 and f"gpus '{gpus[0]}'" in text
        granted += gpus
    assert len(set(granted)) == 2
    # the GPUs went back when the job ended, and the ledger recorded who had them
    assert hub.gpus()["free"] == 3
    events = hub.admin.get(hub.api("/gpulab/events"), params={"user": "bob"}, timeout=10).json()
    assert {e["action"] for e in events["events"]} == {"grant", "release"}


TORCH_UNEVEN = textwrap.dedent(
    """
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    dist.barrier()
    dist.destroy_process_group()
    if rank:  # rank 0 is done first; the others still have work to finish
        with open(f"started-{rank}", "w"):
            pass
        import os, time
        while not os.path.exists("finish"):
            time.sleep(0.05)
    print(f"rank {rank} done", flush=True)
    """
)


def test_a_pytorch_job_ends_when_every_worker_has(hub):
    """Kubeflow's rule for a PyTorch job with no master: all workers. Rank 0 ending first
    stops no one, and the job succeeds only when the last worker does."""
    pia = hub.create_user("pia")
    put_file(hub, "pia", "uneven.py", TORCH_UNEVEN)
    submit(pia, {"name": "uneven", "framework": "pytorch", "script": "uneven.py", "replicas": 3})
    home = home_of(hub, "pia").home
    wait_for(
        lambda: all((home / f"started-{r}").exists() for r in (1, 2)),
        120,
        "ranks 1 and 2 to be past the barrier",
    )
    wait_for(lambda: "rank 0 done" in logs(pia, "uneven", "worker-0"), 60, "rank 0 to finish first")
    assert job(pia, "uneven")["state"] == "running"  # ranks 1 and 2 still work
    put_file(hub, "pia", "finish", "")
    done = wait_job(pia, "uneven")
    assert done["state"] == "succeeded", done["message"]
    for rank in range(3):
        assert logs(pia, "uneven", f"worker-{rank}").rstrip().endswith(f"rank {rank} done")
    assert {r["state"] for r in done["replicas"]} == {"succeeded"}


def test_restart_policies_and_failure_reasons(hub):
    carol = hub.create_user("carol")
    # worker-1 is killed (137) on its first attempt, then succeeds: retried by ExitCode
    put_file(
        hub,
        "carol",
        "flaky.py",
        textwrap.dedent(
            """
            import os, signal, time
            marker = os.path.expanduser("~/flaky-" + os.environ["GPULAB_JOB"])
            if os.environ["GPULAB_REPLICA"] == "worker-1" and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            print("done", os.environ["GPULAB_REPLICA"])
            """
        ),
    )
    worker = {"count": 2, "restart_policy": "ExitCode", "backoff_limit": 2}
    submit(carol, {"name": "flaky", "script": "flaky.py", "replicas": {"worker": worker}})
    done = wait_job(carol, "flaky")
    assert done["state"] == "succeeded", done["message"]
    w1 = [r for r in done["replicas"] if r["name"] == "worker-1"][0]
    assert w1["restarts"] == 1 and w1["exit_code"] == 0
    text = logs(carol, "flaky", "worker-1")
    assert "attempt 1" in text and "attempt 2" in text and "done worker-1" in text
    assert any("restart 1" in e["message"] for e in done["events"])

    # exit 1 is the program's own failure: not retried, the job fails with the reason
    spec = {
        "name": "broken",
        "command": ["python", "-c", "import sys; print('bad config: lr'); sys.exit(1)"],
        "replicas": {"worker": worker},
    }
    submit(carol, spec)
    failed = wait_job(carol, "broken")
    assert failed["state"] == "failed"
    assert (
        "worker-0 exited with code 1" in failed["message"]
        or "worker-1 exited with code 1" in failed["message"]
    )
    assert "bad config: lr" in failed["message"]
    assert all(r["restarts"] == 0 for r in failed["replicas"])

    # a command that does not exist: the shell's message, exit 127
    submit(carol, {"name": "typo", "command": "trian.sh --fast"})
    failed = wait_job(carol, "typo")
    assert "exited with code 127" in failed["message"] and "not found" in failed["message"]

    # OnFailure gives up after the backoff limit
    spec = {
        "name": "always",
        "command": "false",
        "replicas": {"worker": {"restart_policy": "OnFailure", "backoff_limit": 1}},
    }
    submit(carol, spec)
    failed = wait_job(carol, "always")
    assert failed["replicas"][0]["restarts"] == 1 and "backoff limit" in failed["message"]


def test_cancel_stops_every_replica_and_frees_gpus_and_ports(hub):
    dave = hub.create_user("dave")
    # each replica takes a moment to end after the TERM, and says so
    last_words = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        "    time.sleep(1.5)\n"
        "    print('saved, bye', flush=True)\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n"
    )
    spec = {
        "name": "forever",
        "framework": "tensorflow",
        "command": ["python", "-c", last_words],
        "replicas": {"chief": 1, "worker": {"count": 1, "gpus": 1}, "ps": {"gpus": 1}},
    }
    submit(dave, spec)
    running = wait_for(
        lambda: (
            (j := job(dave, "forever"))["state"] == "running"
            and all(r["state"] == "running" for r in j["replicas"])
            and j
        ),
        60,
        "every replica to run",
    )
    assert [r["name"] for r in running["replicas"]] == ["chief-0", "worker-0", "ps-0"]
    wait_for(lambda: "up" in logs(dave, "forever", "ps-0"), 30, "the ps to print")
    assert len(hub.unix_pids("dave")) >= 3
    assert hub.gpus()["free"] == 1
    holders = sorted(g["holder"] for g in hub.gpus()["gpus"] if g["state"] == "held")
    assert holders == ["job forever (ps-0)", "job forever (worker-0)"]
    ports = [int(r["address"].rsplit(":", 1)[1]) for r in running["replicas"]]

    # a log followed while the job is cancelled goes on to the replica's last line
    with ThreadPoolExecutor(1) as pool:
        followed = pool.submit(logs, dave, "forever", "chief-0", True)
        r = dave.session.post(hub.api("/gpulab/jobs/forever/cancel"), timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "cancelled"
        assert followed.result(timeout=60).endswith(
            "up\nsaved, bye\n==> gpulab: stopped by the hub (SIGTERM; exit code 143): its "
            "status at the hub says why\n"
        ), followed.result()
    wait_for(lambda: not hub.unix_pids("dave"), 20, "every replica process to end")
    assert hub.gpus()["free"] == 3
    stopped = job(dave, "forever")["replicas"]
    assert {x["state"] for x in stopped} == {"stopped"}
    # each replica's record and log say it was stopped, and why
    assert {x["message"] for x in stopped} == {
        "Stopped by the hub as the job ended: Cancelled: cancelled by the user"
    }
    for replica in ("chief-0", "worker-0", "ps-0"):
        last = logs(dave, "forever", replica).rstrip().rsplit("\n", 1)[-1]
        assert last == (
            "==> gpulab: stopped by the hub (SIGTERM; exit code 143): its status at the hub "
            "says why"
        ), last
    import socket

    for port in ports:  # nothing listens where the replicas did
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
    # cancelling again is a no-op; deleting forgets the job
    assert (
        dave.session.post(hub.api("/gpulab/jobs/forever/cancel"), timeout=30).json()["state"]
        == "cancelled"
    )
    assert dave.session.delete(hub.api("/gpulab/jobs/forever"), timeout=30).status_code == 204
    assert dave.session.get(hub.api("/gpulab/jobs/forever"), timeout=30).status_code == 404


def test_a_job_that_does_not_fit_waits_in_the_queue(hub):
    erin = hub.create_user("erin")
    frank = hub.create_user("frank")
    assert erin.spawn(profile="gpu-2").status_code in (201, 202)
    assert hub.gpus()["free"] == 1
    spec = {
        "name": "big",
        "command": "python -c 'print(42)'",
        "replicas": {"worker": {"count": 2, "gpus": 1}},
    }
    queued = submit(frank, spec)
    queued = wait_for(
        lambda: (j := job(frank, "big"))["queue_position"] == 1 and j, 30, "a place in the queue"
    )
    assert queued["state"] == "queued" and "Waiting for 2 GPU(s)" in queued["message"]
    # the one free GPU is kept for the queue, not handed to a later spawn
    grace = hub.create_user("grace")
    r = grace.spawn(profile="gpu-1", wait=False)
    assert r.status_code >= 400 and "queue" in r.text
    erin.stop()
    done = wait_job(frank, "big")
    assert done["state"] == "succeeded" and "42" in logs(frank, "big", "worker-1")


def test_bad_jobs_are_refused_and_users_see_only_their_own(hub):
    heidi = hub.create_user("heidi")
    ivan = hub.create_user("ivan")
    cases = [
        ({"name": "x", "framework": "mxnet", "command": "true"}, 400, "framework"),
        ({"name": "x", "command": "true", "replicas": {"worker": -1}}, 400, "count"),
        ({"name": "x", "script": "../../etc/passwd"}, 400, "outside your home"),
        ({"name": "x", "script": "/etc/passwd"}, 400, "outside your home"),
        ({"name": "x", "command": "true", "workdir": "a/../../b"}, 400, "outside your home"),
        (
            {"name": "x", "command": "true", "replicas": {"worker": {"count": 3, "gpus": 1}}},
            403,
            "quota",
        ),
        ({"name": "Bad_Name", "command": "true"}, 400, "name"),
        (
            {"name": "x", "framework": "tensorflow", "command": "true", "replicas": {"master": 1}},
            400,
            "role",
        ),
        ({"name": "x", "command": "true", "env": {"TF_CONFIG": "{}"}}, 400, "TF_CONFIG"),
        ({"name": "x"}, 400, "command"),
        ({"name": "x", "command": "true", "colour": "red"}, 400, "unknown field"),
    ]
    for spec, status, words in cases:
        r = heidi.session.post(hub.api("/gpulab/jobs"), json=spec, timeout=30)
        assert r.status_code == status, (spec, r.text)
        assert words in r.json()["message"], (spec, r.text)
    # the shared hub's group "team" may hold 1 GPU: a 2-GPU job of a member never fits
    teamer = hub.create_user("teamer", groups=("team",))
    spec = {"name": "x", "command": "true", "replicas": {"worker": {"count": 2, "gpus": 1}}}
    r = teamer.session.post(hub.api("/gpulab/jobs"), json=spec, timeout=30)
    assert r.status_code == 403 and "group team may hold 1" in r.json()["message"], r.text
    r = heidi.session.post(hub.api("/gpulab/jobs"), data=b"{not json", timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["message"]

    submit(ivan, {"name": "secret", "command": ["sleep", "60"]})
    submit(ivan, {"name": "secret", "command": "true"}, expect=409)
    assert [
        j["name"] for j in heidi.session.get(hub.api("/gpulab/jobs"), timeout=30).json()["jobs"]
    ] == []
    for method, path in (
        ("get", "/gpulab/jobs/secret?user=ivan"),
        ("post", "/gpulab/jobs/secret/cancel?user=ivan"),
        ("delete", "/gpulab/jobs/secret?user=ivan"),
        ("get", "/gpulab/jobs/secret/logs?user=ivan"),
    ):
        r = getattr(heidi.session, method)(hub.api(path), timeout=30)
        assert r.status_code == 403, (method, path, r.text)
    assert heidi.session.get(hub.api("/gpulab/jobs/secret"), timeout=30).status_code == 404
    r = heidi.session.get(
        hub.api("/gpulab/jobs/secret/logs"), params={"replica": "worker-9"}, timeout=30
    )
    assert r.status_code == 404
    # an admin sees and stops it
    listed = hub.admin.get(hub.api("/gpulab/jobs"), timeout=30).json()["jobs"]
    assert "secret" in [j["name"] for j in listed]
    r = hub.admin.post(hub.api("/gpulab/jobs/secret/cancel"), params={"user": "ivan"}, timeout=60)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    wait_for(lambda: not hub.unix_pids("ivan"), 20, "ivan's replica to end")


def test_log_links_in_the_home_are_not_followed(hub):
    judy = hub.create_user("judy")
    submit(judy, {"name": "quick", "command": ["echo", "hello"]})
    done = wait_job(judy, "quick")
    assert "hello" in logs(judy, "quick", "worker-0")
    account = home_of(hub, "judy")
    log_file = account.home / f".gpulab/jobs/{done['id']}-quick/worker-0.log"
    log_file.unlink()
    os.symlink("/etc/shadow", log_file)
    os.lchown(log_file, account.uid, account.gid)
    text = logs(judy, "quick", "worker-0")
    assert "root:" not in text and text == ""
    # nor to make the hub create folders outside the home
    import shutil
    import tempfile

    outside = Path(tempfile.mkdtemp())
    jobs = account.home / ".gpulab" / "jobs"
    shutil.rmtree(jobs)
    os.symlink(outside, jobs)
    os.lchown(jobs, account.uid, account.gid)
    submit(judy, {"name": "escape", "command": ["echo", "hi"]})
    failed = wait_job(judy, "escape")
    assert failed["state"] == "failed" and "could not start" in failed["message"]
    assert list(outside.iterdir()) == []
    jobs.unlink()
    # a working folder that is not there: the reason says so
    submit(judy, {"name": "nowhere", "command": ["echo", "hi"], "workdir": "no/such"})
    failed = wait_job(judy, "nowhere")
    assert "exited with code 2: gpulab: cannot enter ~/no/such" in failed["message"]


def test_deadline_fails_a_job_that_runs_too_long(hub):
    kim = hub.create_user("kim")
    submit(kim, {"name": "slow", "command": ["sleep", "120"], "active_deadline": "2s"})
    start = time.monotonic()
    failed = wait_job(kim, "slow")
    assert failed["state"] == "failed" and "DeadlineExceeded" in failed["message"]
    assert time.monotonic() - start < 30
    wait_for(lambda: not hub.unix_pids("kim"), 20, "the replica to end")


def test_a_hub_restart_takes_over_running_jobs_and_keeps_queued_ones(make_hub):
    hub = make_hub({"gpus": {"ids": ["0"]}}).start()
    lee = hub.create_user("lee")
    # ends while the hub is down: its exit code still decides it
    quick = "import sys, time; time.sleep(3); print('finished'); sys.exit(3)"
    submit(lee, {"name": "ends", "command": ["python", "-c", quick]})
    submit(lee, {"name": "long", "command": ["sleep", "300"], "replicas": {"worker": {"gpus": 1}}})
    submit(lee, {"name": "early", "command": ["sleep", "301"]})
    wait_for(lambda: job(lee, "long")["state"] == "running", 30, "the GPU job to run")
    wait_for(lambda: job(lee, "early")["state"] == "running", 30, "the other job to run")
    submit(
        lee, {"name": "waiting", "command": ["echo", "later"], "replicas": {"worker": {"gpus": 1}}}
    )
    wait_for(lambda: job(lee, "waiting")["queue_position"] == 1, 30, "the third job to queue")
    pids = set(hub.unix_pids("lee"))
    hub.kill()
    time.sleep(4)
    hub.start()
    # cancelled the moment the hub answers, before it has taken the job over: the
    # request waits for that, and the replica ends
    r = lee.session.post(hub.api("/gpulab/jobs/early/cancel"), timeout=60)
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text

    def sleeping(seconds: str) -> bool:
        found = subprocess.run(["pgrep", "-f", f"^sleep {seconds}$"], capture_output=True)
        return bool(set(map(int, found.stdout.split())) & set(hub.unix_pids("lee")))

    wait_for(lambda: not sleeping("301"), 30, "the cancelled job's replica to end")
    assert sleeping("300")
    ended = wait_job(lee, "ends", timeout=60)
    assert ended["state"] == "failed", ended
    assert "worker-0 exited with code 3: finished" in ended["message"]
    # the GPU job runs on, with its GPU, the same process, supervised again
    long = job(lee, "long")
    assert long["state"] == "running"
    assert any("Taken over after a hub restart" in e["message"] for e in long["events"])
    assert hub.holders() == {"0": "lee"}
    assert job(lee, "waiting")["state"] == "queued"
    assert set(hub.unix_pids("lee")) <= pids
    r = lee.session.post(hub.api("/gpulab/jobs/long/cancel"), timeout=60)
    assert r.json()["state"] == "cancelled"
    # then the queued one gets the GPU
    done = wait_job(lee, "waiting", timeout=60)
    assert done["state"] == "succeeded" and "later" in logs(lee, "waiting", "worker-0")
    assert requests.get(hub.api("/"), timeout=10).status_code == 200
    wait_for(lambda: hub.gpus()["free"] == 1, 30, "the GPU to be free")


TRIAL = textwrap.dedent(
    """
    import argparse, json, os, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float)
    p.add_argument("--units", type=int)
    args = p.parse_args()
    assert float(os.environ["GPULAB_PARAM_LR"]) == args.lr
    with open(os.path.expanduser(f"~/spans/{os.environ['GPULAB_JOB']}"), "w") as f:
        f.write(f"{time.time()} ")
        time.sleep(1.5)
        f.write(f"{time.time()}")
    if args.lr > 0.5:
        sys.exit("diverged: loss is nan")
    print(f"gpulab-metric: loss={(args.lr - 0.22) ** 2 + args.units / 1000:.6f}")
    with open(os.environ["GPULAB_METRICS_FILE"], "w") as f:
        json.dump({"accuracy": 1 - args.lr}, f)
    """
)


def test_sweep_runs_trials_in_parallel_and_ranks_them(hub):
    mia = hub.create_user("mia")
    put_file(hub, "mia", "trial.py", TRIAL)
    put_file(hub, "mia", "spans/.keep", "")
    spec = {
        "name": "lr",
        "job": {"script": "trial.py"},
        "parameters": {"lr": [0.1, 0.2, 0.3, 0.9], "units": {"values": [1]}},
        "max_parallel": 2,
        "objective": {"metric": "loss", "goal": "minimize"},
    }
    r = mia.session.post(hub.api("/gpulab/sweeps"), json=spec, timeout=30)
    assert r.status_code == 201, r.text
    assert r.json()["total_trials"] == 4
    r = mia.session.post(hub.api("/gpulab/sweeps"), json=spec, timeout=30)
    assert r.status_code == 409

    done = wait_sweep(mia, "lr", 120)
    assert done["state"] == "succeeded", done["message"]
    names = [t["name"] for t in done["trials"]]
    assert names == ["lr-2", "lr-3", "lr-1", "lr-4"], done["trials"]
    assert done["best"]["name"] == "lr-2" and done["best"]["params"] == {"lr": 0.2, "units": 1}
    assert done["best"]["metric"] == pytest.approx((0.2 - 0.22) ** 2 + 0.001)
    assert done["best"]["metrics"]["accuracy"] == pytest.approx(0.8)
    failed = done["trials"][-1]
    assert failed["state"] == "failed" and "diverged" in failed["message"]
    assert failed["metric"] is None
    assert "4 trials: 3 succeeded, 1 failed; best lr-2" in done["message"]
    # never more than two trials at once, and the trials overlapped (they ran in parallel)
    spans = []
    for i in range(1, 5):
        text = (home_of(hub, "mia").home / f"spans/lr-{i}").read_text().split()
        spans.append((float(text[0]), float(text[1])))
    most = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert most == 2, spans
    # the trials are jobs of their own, listed by sweep
    jobs = mia.session.get(hub.api("/gpulab/jobs"), params={"sweep": "lr"}, timeout=30).json()
    assert sorted(j["name"] for j in jobs["jobs"]) == ["lr-1", "lr-2", "lr-3", "lr-4"]
    assert mia.session.delete(hub.api("/gpulab/sweeps/lr"), timeout=30).status_code == 204
    assert mia.session.get(hub.api("/gpulab/jobs"), timeout=30).json()["jobs"] == []


def test_bad_sweeps_are_refused(hub):
    nia = hub.create_user("nia")
    good = {
        "name": "s",
        "job": {"command": "true"},
        "parameters": {"lr": [1]},
        "objective": {"metric": "loss"},
    }
    cases = [
        ({**good, "algorithm": "bayes"}, "algorithm"),
        ({**good, "parameters": {}}, "parameters"),
        (
            {
                **good,
                "parameters": {"lr": {"min": 1, "max": 0}},
                "algorithm": "random",
                "trials": 2,
            },
            "min is above max",
        ),
        ({**good, "algorithm": "random", "trials": 0}, "trials"),
        ({**good, "job": {"name": "x", "command": "true"}}, "job.name"),
        ({**good, "job": {"command": "true", "framework": "caffe"}}, "framework"),
        ({**good, "parameters": {"lr": list(range(300))}}, "at most 256"),
        ({**good, "objective": {"metric": "loss", "goal": "lowest"}}, "goal"),
    ]
    for spec, words in cases:
        r = nia.session.post(hub.api("/gpulab/sweeps"), json=spec, timeout=30)
        assert r.status_code == 400, (spec, r.text)
        assert words in r.json()["message"], (spec, r.text)
    assert nia.session.get(hub.api("/gpulab/sweeps/nope"), timeout=30).status_code == 404


def test_job_installs_its_package_first(hub):
    from hubfixture import tiny_wheel

    olga = hub.create_user("olga")
    account = home_of(hub, "olga")
    wheel = account.home / "dist" / "gpulabprobe-1.0-py3-none-any.whl"
    put_file(hub, "olga", "dist/.keep", "")
    wheel.write_bytes(tiny_wheel())
    os.chown(wheel, account.uid, account.gid)
    spec = {
        "name": "pkg",
        "package": "dist/gpulabprobe-1.0-py3-none-any.whl",
        "command": ["python", "-c", "import gpulabprobe; print('value', gpulabprobe.VALUE)"],
    }
    submit(olga, spec)
    done = wait_job(olga, "pkg")
    assert done["state"] == "succeeded", (done["message"], logs(olga, "pkg", "install"))
    assert "value 42" in logs(olga, "pkg", "worker-0")
    assert "Successfully installed gpulabprobe" in logs(olga, "pkg", "install")
    # the package is the job's, not installed for the user's notebooks
    assert not list((account.home / ".local").glob("**/gpulabprobe"))

    submit(olga, {**spec, "name": "nopkg", "package": "dist/missing.whl"})
    failed = wait_job(olga, "nopkg")
    assert failed["state"] == "failed" and "installing ~/dist/missing.whl" in failed["message"]
    assert failed["replicas"][0]["state"] == "stopped"


def test_a_killed_replica_frees_its_gpu_at_once(hub):
    """Like a server's: the runner waits on the replica's process, so its GPU is free
    within moments of its end, and the job says how the replica ended."""
    ivy = hub.create_user("ivy")
    spec = {"name": "victim", "command": ["sleep", "302"], "replicas": {"worker": {"gpus": 1}}}
    submit(ivy, spec)
    wait_for(lambda: job(ivy, "victim")["state"] == "running", 60, "the job to run")
    assert list(hub.holders().values()) == ["ivy"]

    def replica() -> set[int]:
        # "running" once the runner started it; its command may not have begun yet
        found = subprocess.run(["pgrep", "-f", "^sleep 302$"], capture_output=True, text=True)
        return set(map(int, found.stdout.split())) & set(hub.unix_pids("ivy"))

    victims = wait_for(replica, 30, "the replica's command to run")
    assert len(victims) == 1
    killed = time.monotonic()
    os.kill(victims.pop(), 9)
    # within a few seconds on a busy machine (0.2 s here)
    wait_for(lambda: hub.holders() == {}, 6, "the replica's GPU to be free")
    print(f"killed replica to GPU free: {time.monotonic() - killed:.2f} s")
    ended = wait_job(ivy, "victim", timeout=60)
    assert ended["state"] == "failed" and "worker-0" in ended["message"], ended


NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "metadata": {"tags": ["parameters"]},
            "source": "lr = 1.0",
            "outputs": [],
            "execution_count": None,
        },
        {
            "cell_type": "code",
            "metadata": {},
            "source": "import os\nreplica = os.environ['GPULAB_REPLICA']\n"
            "print('replica', replica, 'of', os.environ['GPULAB_REPLICAS'])\n"
            "print(f'gpulab-metric: loss={(lr - 0.2) ** 2}')",
            "outputs": [],
            "execution_count": None,
        },
    ],
    "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


def test_a_notebook_runs_as_a_job_and_as_a_sweep(hub):
    import json

    olga = hub.create_user("olga")
    put_file(hub, "olga", "exp/train.ipynb", json.dumps(NOTEBOOK))
    submitted = submit(
        olga,
        {"name": "nb", "notebook": "exp/train.ipynb", "args": ["lr=0.5"], "replicas": 2},
    )
    assert submitted["spec"]["notebook"] == "exp/train.ipynb"
    done = wait_job(olga, "nb")
    assert done["state"] == "succeeded", done["message"]
    home = home_of(hub, "olga").home
    folder = home / done["logs"].removeprefix("~/")
    for replica in ("worker-0", "worker-1"):
        # the cells' output in the log, as it came, and the notebook as it ran beside it
        text = logs(olga, "nb", replica)
        assert f"replica {replica} of 2" in text and "every cell ran" in text, text
        executed = json.loads((folder / f"{replica}.ipynb").read_text())
        assert "".join(executed["cells"][1]["source"]) == "# Parameters of this run\nlr = 0.5\n"
        printed = "".join(executed["cells"][2]["outputs"][0]["text"])
        assert f"replica {replica} of 2" in printed
        assert (folder / f"{replica}.ipynb").stat().st_uid == home.stat().st_uid  # hers
    assert done["metrics"]["loss"] == pytest.approx(0.09)

    # a sweep gives each trial its parameters; the notebook's printed metric ranks them
    spec = {
        "name": "nbs",
        "job": {"notebook": "exp/train.ipynb"},
        "parameters": {"lr": [0.9, 0.3]},
        "max_parallel": 2,
        "objective": {"metric": "loss", "goal": "minimize"},
    }
    r = olga.session.post(hub.api("/gpulab/sweeps"), json=spec, timeout=30)
    assert r.status_code == 201, r.text

    swept = wait_sweep(olga, "nbs", 150)
    assert swept["state"] == "succeeded", swept["message"]
    assert [t["params"]["lr"] for t in swept["trials"]] == [0.3, 0.9]
    assert swept["best"]["metric"] == pytest.approx(0.01)


KATIB_STYLE = textwrap.dedent(
    """
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    lr = parser.parse_args().lr
    for epoch in range(3):
        print(f"Epoch {epoch + 1}/3 - loss: {(lr - 0.2) ** 2 + 1 / (epoch + 1):.4f}")
    print(f"final_loss={(lr - 0.2) ** 2:.4f}")
    """
)


def test_a_sweep_reads_the_metric_an_unchanged_script_prints(hub):
    """Katib's StdOut collector: name=value (and name: value) lines, no gpulab words."""
    quin = hub.create_user("quinn")
    put_file(hub, "quinn", "plain.py", KATIB_STYLE)
    spec = {
        "name": "plain",
        "job": {"script": "plain.py"},
        "parameters": {"lr": [0.5, 0.3]},
        "max_parallel": 2,
        "objective": {"metric": "final_loss"},
    }
    r = quin.session.post(hub.api("/gpulab/sweeps"), json=spec, timeout=30)
    assert r.status_code == 201, r.text

    done = wait_sweep(quin, "plain", 120)
    assert done["state"] == "succeeded", done["message"]
    assert [(t["params"]["lr"], t["metric"]) for t in done["trials"]] == [(0.3, 0.01), (0.5, 0.09)]
    # a job that names its metrics gets them from the same lines
    submit(quin, {"name": "named", "script": "plain.py", "metrics": ["loss", "final_loss"]})
    named = wait_job(quin, "named")
    assert named["metrics"] == {"loss": pytest.approx(0.3433), "final_loss": pytest.approx(0.01)}


KATIB_FORMAT = r"([\w|-]+)\s*=\s*([+-]?\d*(?:\.\d+)?(?:[Ee][+-]?\d+)?)"
"""Katib's default metricsFormat, its inner groups made non-capturing."""

KATIB_FORMAT_TRIAL = textwrap.dedent(
    """
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    lr = parser.parse_args().lr
    accuracy = 1 - (lr - 0.2) ** 2
    for epoch in range(3):
        print(f"Epoch[{epoch}] Train-accuracy={accuracy - 0.1:.4f}")
        print(f"Epoch[{epoch}] Validation-accuracy={accuracy - (2 - epoch) / 100:.4f}")
    print("Validation-accuracy: 0.0 (a summary the format does not match)")
    """
)


def test_a_sweep_reads_its_metrics_with_a_katib_metrics_format(hub):
    """Katib's metricsFormat: the sweep's regular expression finds the metric instead of
    name=value / name: value (the last line would win under that)."""
    rhea = hub.create_user("rhea")
    put_file(hub, "rhea", "katib.py", KATIB_FORMAT_TRIAL)
    spec = {
        "name": "kfmt",
        "job": {"script": "katib.py", "metrics": ["Train-accuracy"]},
        "parameters": {"lr": [0.5, 0.3]},
        "max_parallel": 2,
        "objective": {"metric": "Validation-accuracy", "goal": "maximize"},
        "metrics_format": KATIB_FORMAT,
    }
    r = rhea.session.post(hub.api("/gpulab/sweeps"), json=spec, timeout=30)
    assert r.status_code == 201, r.text
    done = wait_sweep(rhea, "kfmt", 120)
    assert done["state"] == "succeeded", done["message"]
    assert [(t["params"]["lr"], t["metric"]) for t in done["trials"]] == [(0.3, 0.99), (0.5, 0.91)]
    assert done["best"]["metrics"] == {"Validation-accuracy": 0.99, "Train-accuracy": 0.89}
    # Katib's own default, with its four groups, is refused naming the field
    r = rhea.session.post(
        hub.api("/gpulab/sweeps"),
        json={**spec, "name": "kbad", "metrics_format": r"([\w|-]+)\s*=\s*((-?\d+)(\.\d+)?)"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["message"].startswith(
        "metrics_format: needs exactly two groups, (name) and (value); it has 4"
    ), r.text


TENSORBOARD_TRIAL = textwrap.dedent(
    """
    import argparse, os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    lr = parser.parse_args().lr
    steps = round(lr * 10)  # the first trial writes more steps than the second
    for run, offset in (("train", 0.0), ("validation", 0.1)):
        writer = tf.summary.create_file_writer(f"logs/{run}")
        with writer.as_default():
            for step in range(steps):
                tf.summary.scalar("loss", (lr - 0.2) ** 2 + offset + 1 / (step + 1), step=step)
                if run == "validation":
                    tf.summary.scalar("accuracy", 0.9 - (lr - 0.2) ** 2 + step / 100, step=step)
        writer.close()
    print("wrote", steps, "steps")
    """
)


def test_a_sweep_ranks_trials_by_the_tensorboard_scalars_an_unchanged_script_writes(hub):
    """Katib's TensorFlowEvent collector: the trials' event files are read after each
    trial, as its user, into its metrics. Both trials write to the same folder; the
    second reads only its own files (not the first trial's higher steps)."""
    sara = hub.create_user("sara")
    put_file(hub, "sara", "tb/train.py", TENSORBOARD_TRIAL)
    spec = {
        "name": "tb",
        "job": {"script": "train.py", "workdir": "tb", "metrics": ["validation/loss", "loss"]},
        "parameters": {"lr": [0.5, 0.3]},
        "objective": {"metric": "accuracy", "goal": "maximize"},
        "metrics_events": "logs",
    }
    r = sara.session.post(hub.api("/gpulab/sweeps"), json=spec, timeout=30)
    assert r.status_code == 201, r.text
    done = wait_sweep(sara, "tb", 300)
    assert done["state"] == "succeeded", (done["message"], logs(sara, "tb-1", "worker-0"))
    assert [(t["params"]["lr"], t["metric"]) for t in done["trials"]] == [(0.3, 0.91), (0.5, 0.85)]
    # validation/loss by its full name; loss ends train/loss and validation/loss: not read
    best = done["best"]["metrics"]
    assert best == {"accuracy": 0.91, "validation/loss": pytest.approx(0.01 + 0.1 + 1 / 3)}
    assert done["trials"][1]["metrics"]["validation/loss"] == pytest.approx(0.09 + 0.1 + 1 / 5)
    text = logs(sara, "tb-2", "worker-0")
    assert (
        "==> gpulab: TensorBoard metrics: read validation/loss at step 2, accuracy "
        "(validation/accuracy) at step 2 from 2 event files under logs"
    ) in text, text
    assert (
        "==> gpulab: TensorBoard metrics: loss is the end of train/loss, validation/loss: "
        "name one of them"
    ) in text
    # the event files are hers, read with her rights: nothing of the hub's went there
    account = home_of(hub, "sara")
    for f in (account.home / "tb" / "logs").rglob("*"):
        assert f.stat().st_uid == account.uid, f

    # an image without python3: the log says so in one line, and the job still succeeds
    submit(sara, {"name": "nopy", "command": ["/bin/true"], "env": {"PATH": "/nowhere"},
                  "metrics": ["loss"], "metrics_events": "logs"})  # fmt: skip
    ended = wait_job(sara, "nopy")
    assert ended["state"] == "succeeded", ended["message"]
    lines = [line for line in logs(sara, "nopy", "worker-0").splitlines() if "python3" in line]
    assert lines == [
        "==> gpulab: no python3 here: the TensorBoard metrics under logs were not read"
    ]
