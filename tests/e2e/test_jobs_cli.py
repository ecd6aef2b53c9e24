"""The ``gpulab job`` and ``gpulab sweep`` commands, run as a user runs them: the CLI as a
subprocess with GPULAB_URL / GPULAB_TOKEN, against a real hub running real jobs."""

from __future__ import annotations

import json
import subprocess
import textwrap
import threading

from hubfixture import BIN, cells, cli_env, gpulab, lines_with, wait_for


def background(hub, token: str, *args: str, cwd=None) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "gpulab"), *args],
        env=cli_env(hub, token),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def api_job(user, name: str) -> dict:
    r = user.session.get(user.hub.api(f"/gpulab/jobs/{name}"), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_submit_follow_streams_the_log_then_list_status_logs_cancel_delete(hub, tmp_path):
    alice = hub.create_user("alice")
    (tmp_path / "hello.yaml").write_text(
        textwrap.dedent(
            """\
            # a plain job: one worker, no GPU
            name: hello
            command: python -c "print('hello from the job')"
            """
        )
    )
    out = gpulab(hub, alice.token, "job", "submit", "hello.yaml", "--follow", cwd=tmp_path)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    stdout = out.stdout
    assert "Submitted job hello: queued" in stdout
    assert "hello from the job" in stdout
    assert stdout.rstrip().endswith("Job hello succeeded")
    # the submission, then the log, then the verdict
    assert (
        stdout.index("Submitted job hello")
        < stdout.index("hello from the job")
        < stdout.index("Job hello succeeded")
    )
    assert api_job(alice, "hello")["state"] == "succeeded"

    out = gpulab(hub, alice.token, "job", "list")
    assert out.returncode == 0, out.stderr
    (row,) = lines_with(out.stdout, "hello")
    assert "plain" in row and "succeeded" in row and "1 succeeded" in row and "ago" in row
    assert "Jobs (1)" in out.stdout

    out = gpulab(hub, alice.token, "job", "status", "hello")
    assert out.returncode == 0, out.stderr
    assert "framework  plain" in out.stdout and "state      succeeded" in out.stdout
    assert "Succeeded: every replica finished" in out.stdout
    assert "~/.gpulab/jobs/" in out.stdout and "ran for" in out.stdout
    replicas, events = out.stdout.split("Replicas")[1].split("Last events")
    (replica,) = lines_with(replicas, "worker-0")
    assert "succeeded" in replica and "127.0.0.1:" in replica
    assert "Submitted" in events and "Exited with code 0" in events

    out = gpulab(hub, alice.token, "job", "logs", "hello")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("==> gpulab: worker-0 of job hello, attempt 1")
    assert "hello from the job\n" in out.stdout
    out = gpulab(hub, alice.token, "job", "logs", "hello", "--replica", "worker-3")
    assert out.returncode == 1 and "404" in out.stderr and "no replica worker-3" in out.stderr

    out = gpulab(hub, alice.token, "job", "cancel", "hello")
    assert out.returncode == 0, out.stderr
    assert "Job hello had already succeeded: nothing to cancel" in out.stdout

    out = gpulab(hub, alice.token, "job", "delete", "hello")
    assert out.returncode == 0 and "Deleted job hello" in out.stdout
    out = gpulab(hub, alice.token, "job", "status", "hello")
    assert out.returncode == 1 and "404" in out.stderr and "no job named hello" in out.stderr
    out = gpulab(hub, alice.token, "job", "list")
    assert out.returncode == 0 and out.stdout.strip() == "No jobs"


def test_a_failing_job_exits_1_with_its_reason(hub, tmp_path):
    bob = hub.create_user("bob")
    spec = {
        "name": "broken",
        "command": ["python", "-c", "import sys; print('bad config: lr'); sys.exit(3)"],
    }
    (tmp_path / "broken.json").write_text(json.dumps(spec))
    out = gpulab(hub, bob.token, "job", "submit", "broken.json", "--follow", cwd=tmp_path)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "bad config: lr" in out.stdout  # the log
    assert "gpulab: job broken failed: worker-0 exited with code 3: bad config: lr" in out.stderr
    assert "Traceback" not in out.stderr

    # --wait, the spec on stdin, the name from the command line; metrics in the verdict
    out = gpulab(
        hub,
        bob.token,
        "job",
        "submit",
        "-",
        "--name",
        "scored",
        "--wait",
        stdin="command: [python, -c, \"print('gpulab-metric: loss=0.25 acc=0.9')\"]\n",
    )
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "Submitted job scored" in out.stdout
    assert "Job scored succeeded: loss=0.25 acc=0.9" in out.stdout
    assert "gpulab-metric" not in out.stdout  # --wait does not print the log

    out = gpulab(
        hub, bob.token, "job", "submit", "-", "--name", "nope", "--wait", stdin="command: 'false'\n"
    )
    assert out.returncode == 1
    assert "job nope failed: worker-0 exited with code 1" in out.stderr

    # the hub refuses a spec: its reason, exit 1
    out = gpulab(
        hub, bob.token, "job", "submit", "-", stdin="name: odd\ncommand: 'true'\ncolour: red\n"
    )
    assert out.returncode == 1
    assert "400" in out.stderr and "unknown field(s): colour" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_queued_job_shows_its_place_and_follow_waits_for_it(hub, tmp_path):
    dave = hub.create_user("dave")
    erin = hub.create_user("erin")
    (tmp_path / "sleeper.yaml").write_text(
        textwrap.dedent(
            """\
            name: sleeper
            command: ["python", "-c", "import time; print('up', flush=True); time.sleep(300)"]
            replicas:
              worker: {gpus: 2}
            """
        )
    )
    out = gpulab(hub, dave.token, "job", "submit", "sleeper.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Submitted job sleeper: queued" in out.stdout
    wait_for(lambda: api_job(dave, "sleeper")["replicas"][0]["state"] == "running", 60, "it to run")
    out = gpulab(hub, dave.token, "job", "list")
    (row,) = lines_with(out.stdout, "sleeper")
    assert "running" in row and "1/1 running" in row and " 2 " in row

    # erin's job needs 2 GPUs, 1 is free: it queues; --follow waits with it
    (tmp_path / "big.yaml").write_text(
        "name: big\ncommand: python -c 'print(6 * 7)'\nreplicas: {worker: {count: 2, gpus: 1}}\n"
    )
    follow = background(hub, erin.token, "job", "submit", "big.yaml", "-f", cwd=tmp_path)
    try:
        wait_for(lambda: api_job(erin, "big")["queue_position"] == 1, 60, "erin's job to be queued")
        out = gpulab(hub, erin.token, "job", "list")
        (row,) = lines_with(out.stdout, "big")
        assert "queued #1" in row and "0/2 running" in row and "Waiting for 2 GPU(s)" in row
        out = gpulab(hub, erin.token, "job", "status", "big")
        assert "queued (#1 in the queue)" in out.stdout

        # the log streams while the job runs, and ends when the job does
        logs = background(hub, dave.token, "job", "logs", "sleeper", "--follow")
        streamed: list[str] = []
        reader = threading.Thread(target=lambda: streamed.extend(logs.stdout), daemon=True)
        reader.start()
        wait_for(lambda: "up\n" in streamed, 30, "the log to stream")
        assert logs.poll() is None and streamed[0].startswith("==> gpulab: worker-0 of job")
        out = gpulab(hub, dave.token, "job", "cancel", "sleeper")
        assert out.returncode == 0 and "Cancelled job sleeper" in out.stdout
        assert logs.wait(timeout=60) == 0, logs.stderr.read()
        reader.join(10)
        assert "up\n" in streamed and streamed[-1] == (
            "==> gpulab: stopped by the hub (SIGTERM; exit code 143): its status at the hub "
            "says why\n"
        )

        stdout, stderr = follow.communicate(timeout=120)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0, (stdout, stderr)
    assert "42" in stdout and "Job big succeeded" in stdout
    # progress went to stderr, one line per change where stderr is not a terminal
    assert "Job big: queued (#1 in the queue): Waiting for 2 GPU(s)" in stderr
    assert "queue" not in stdout.replace("Submitted job big: queued", "")

    out = gpulab(hub, dave.token, "job", "status", "sleeper")
    assert "state      cancelled" in out.stdout
    assert "Cancelled (cancelled by the user)" in out.stdout


def test_bad_spec_files_exit_2_with_a_message(hub, tmp_path):
    carol = hub.create_user("carol")
    files = {
        "broken.yaml": ("name: x\ncommand: [python, -c\n", "is not valid YAML or JSON"),
        "list.yaml": ("- name: x\n- command: true\n", "a job spec is a mapping"),
        "empty.yaml": ("", "is empty"),
        "bad.json": ('{"name": "x",}', "is not valid JSON"),
        "noname.yaml": ("command: 'true'\n", "has no name"),
        "sweep.yaml": (
            "name: lr\njob: {command: 'true'}\nparameters: {lr: [1, 2]}\n",
            "gpulab sweep submit",
        ),
    }
    for name, (text, words) in files.items():
        (tmp_path / name).write_text(text)
        out = gpulab(hub, carol.token, "job", "submit", name, cwd=tmp_path)
        assert out.returncode == 2, (name, out.stdout, out.stderr)
        assert words in out.stderr and name in out.stderr, (name, out.stderr)
        assert "Traceback" not in out.stderr
    out = gpulab(hub, carol.token, "job", "submit", "missing.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "cannot read missing.yaml" in out.stderr
    out = gpulab(hub, carol.token, "sweep", "submit", "list.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "a sweep spec is a mapping" in out.stderr
    out = gpulab(hub, carol.token, "job", "frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr
    # nothing reached the hub
    assert gpulab(hub, carol.token, "job", "list").stdout.strip() == "No jobs"


def test_another_users_job_is_refused(hub):
    ivan = hub.create_user("ivan")
    heidi = hub.create_user("heidi")
    r = ivan.session.post(
        hub.api("/gpulab/jobs"), json={"name": "secret", "command": ["sleep", "120"]}, timeout=30
    )
    assert r.status_code == 201, r.text
    for action in ("status", "logs", "cancel", "delete"):
        out = gpulab(hub, heidi.token, "job", action, "secret", "--user", "ivan")
        assert out.returncode == 1, (action, out.stdout, out.stderr)
        assert "403" in out.stderr and "Traceback" not in out.stderr, (action, out.stderr)
    out = gpulab(hub, heidi.token, "job", "status", "secret")
    assert out.returncode == 1 and "404" in out.stderr
    assert api_job(ivan, "secret")["state"] in ("queued", "starting", "running")

    # an admin (the CLI's own token) sees everyone's jobs (a user column once there are
    # several users' jobs), and acts for ivan
    r = heidi.session.post(
        hub.api("/gpulab/jobs"), json={"name": "mine", "command": ["true"]}, timeout=30
    )
    assert r.status_code == 201, r.text
    admin = (hub.data_root / "cli-token").read_text().strip()
    out = gpulab(hub, admin, "job", "list")
    (row,) = lines_with(out.stdout, "secret")
    assert "ivan" in row
    out = gpulab(hub, admin, "job", "cancel", "secret", "--user", "ivan")
    assert out.returncode == 0 and "Cancelled job secret" in out.stdout
    assert api_job(ivan, "secret")["state"] == "cancelled"
    wait_for(lambda: not hub.unix_pids("ivan"), 20, "ivan's job to end")


# -- sweeps ------------------------------------------------------------------------------

TRIAL = (
    "import os, sys; lr = float(os.environ['GPULAB_PARAM_LR']); "
    "units = int(os.environ['GPULAB_PARAM_UNITS']); print('args', sys.argv[1:]); "
    "sys.exit('units too big') if lr > 0.05 and units > 8 else None; "
    "print(f'gpulab-metric: loss={lr * 100 + units:.4g}')"
)


def test_sweep_submit_wait_status_list_cancel_delete(hub, tmp_path):
    kim = hub.create_user("kim")
    (tmp_path / "sweep.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: lr
            job:
              command: ["python", "-c", "{TRIAL}"]
            parameters:
              lr: [0.1, 0.01]
              units: {{values: [8, 16]}}
            algorithm: grid
            max_parallel: 2
            objective: {{metric: loss, goal: minimize}}
            """
        )
    )
    out = gpulab(hub, kim.token, "sweep", "submit", "sweep.yaml", "--wait", cwd=tmp_path)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "Submitted sweep lr: 4 trial(s), grid, up to 2 at once, minimize loss" in out.stdout
    assert "Trials, best loss first" in out.stdout  # the results, once it ended
    assert "Sweep lr: running" in out.stderr  # progress, on stderr

    out = gpulab(hub, kim.token, "sweep", "status", "lr")
    assert out.returncode == 0, out.stderr
    fields, table = out.stdout.split("Trials, best loss first")
    assert "state      succeeded" in fields and "best       lr-3: loss=9" in fields
    assert "trials     4/4 done" in fields
    rows = [cells(line) for line in table.splitlines() if line.startswith(("│", "┃"))]
    assert rows[0][:6] == ["", "trial", "state", "lr", "units", "loss"]
    # lr-1: 0.1/8, lr-2: 0.1/16 (fails), lr-3: 0.01/8, lr-4: 0.01/16; lowest loss first
    assert [r[:6] for r in rows[1:]] == [
        ["best", "lr-3", "succeeded", "0.01", "8", "9"],
        ["", "lr-4", "succeeded", "0.01", "16", "17"],
        ["", "lr-1", "succeeded", "0.1", "8", "18"],
        ["", "lr-2", "failed", "0.1", "16", "-"],
    ]
    assert "units too big" in rows[4][6]

    out = gpulab(hub, kim.token, "sweep", "list")
    (row,) = lines_with(out.stdout, "lr ")
    assert "succeeded" in row and "grid" in row and "4/4 done" in row
    assert "lr-3: loss=9" in row
    out = gpulab(hub, kim.token, "job", "list", "--sweep", "lr")
    assert "Jobs (4)" in out.stdout and len(lines_with(out.stdout, "│ lr-")) == 4
    out = gpulab(hub, kim.token, "job", "logs", "lr-3")
    assert "args ['--lr=0.01', '--units=8']" in out.stdout

    out = gpulab(hub, kim.token, "sweep", "cancel", "lr")
    assert out.returncode == 0
    assert "Sweep lr had already succeeded: nothing to cancel" in out.stdout
    out = gpulab(hub, kim.token, "sweep", "delete", "lr")
    assert out.returncode == 0 and "Deleted sweep lr" in out.stdout
    out = gpulab(hub, kim.token, "sweep", "status", "lr")
    assert out.returncode == 1 and "404" in out.stderr and "Traceback" not in out.stderr
    assert gpulab(hub, kim.token, "job", "list").stdout.strip() == "No jobs"


def test_sweep_cancel_and_refusals(hub, tmp_path):
    lee = hub.create_user("lee")
    mia = hub.create_user("mia")
    spec = {
        "name": "long",
        # a trial gets its parameters as arguments too: --x=1
        "job": {"command": ["python", "-c", "import time; time.sleep(300)"]},
        "parameters": {"x": [1, 2, 3]},
        "max_parallel": 1,
        "objective": {"metric": "loss"},
    }
    (tmp_path / "long.json").write_text(json.dumps(spec))
    out = gpulab(hub, lee.token, "sweep", "submit", "long.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Submitted sweep long: 3 trial(s), grid, up to 1 at once" in out.stdout
    out = gpulab(hub, lee.token, "sweep", "list")
    (row,) = lines_with(out.stdout, "long")
    assert "running" in row and "0/3 done" in row

    out = gpulab(hub, mia.token, "sweep", "status", "long", "--user", "lee")
    assert out.returncode == 1 and "403" in out.stderr and "Traceback" not in out.stderr
    out = gpulab(hub, mia.token, "sweep", "cancel", "long")
    assert out.returncode == 1 and "404" in out.stderr

    # the hub refuses a sweep: its reason, exit 1
    (tmp_path / "bad.yaml").write_text("name: bad\njob: {command: 'true'}\nparameters: {}\n")
    out = gpulab(hub, lee.token, "sweep", "submit", "bad.yaml", cwd=tmp_path)
    assert out.returncode == 1 and "400" in out.stderr and "parameters" in out.stderr

    out = gpulab(hub, lee.token, "sweep", "cancel", "long")
    assert out.returncode == 0 and "Cancelled sweep long" in out.stdout
    out = gpulab(hub, lee.token, "sweep", "status", "long")
    assert "state      cancelled" in out.stdout
    (trial,) = [cells(line) for line in out.stdout.splitlines() if "│ long-1" in line]
    assert trial[2] == "cancelled"
    wait_for(lambda: not hub.unix_pids("lee"), 20, "the trial to end")
    assert gpulab(hub, lee.token, "sweep", "delete", "long").returncode == 0
