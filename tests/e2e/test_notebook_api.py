"""``import gpulab`` and the ``%%gpulab_job`` magic in a user's own kernel, and the welcome
notebook of a new home, through a real hub with no GPUs: what a user sees in a notebook."""

from __future__ import annotations

import json
import os
import pwd
import re
import threading
import uuid
from pathlib import Path

import pytest
import websocket

from hubfixture import Hub, clean_hub, execute_request, open_notebook, run, wait_for

WELCOME = "Welcome to gpulab.ipynb"


@pytest.fixture(scope="module")
def cpu_hub():
    # no configured ids: the GPUs NVML reports, none on a machine without a driver
    hub = Hub({"gpus": {"ids": []}}).start()
    yield hub
    hub.cleanup()


@pytest.fixture
def hub(cpu_hub):
    yield cpu_hub
    clean_hub(cpu_hub)


def home(hub, name: str) -> Path:
    return Path(pwd.getpwnam(hub.unix_account(name)).pw_dir)


def make_folder(user, path: str) -> None:
    r = user.session.put(f"{user.server_url}/api/contents/{path}", json={"type": "directory"})
    assert r.status_code in (200, 201), r.text


class Cell:
    """A cell running in a notebook's kernel over its websocket, as the notebook runs it,
    with what it shows gathered as it arrives: ``stdout``, ``stderr``, the text of what it
    displayed, and its ``errors`` (as ``error`` messages carry them)."""

    def __init__(self, user, kernel: str, code: str, timeout: float = 120):
        self.shown = {"stdout": "", "stderr": "", "displayed": "", "errors": []}
        url = user.server_url.replace("http://", "ws://") + f"/api/kernels/{kernel}/channels"
        self.ws = websocket.create_connection(
            url, header=[f"Authorization: token {user.token}"], timeout=timeout
        )
        request = execute_request(code, uuid.uuid4().hex)
        self.ws.send(json.dumps(request))
        self.runner = threading.Thread(
            target=self._gather, args=(request["header"]["msg_id"],), daemon=True
        )
        self.runner.start()

    def _gather(self, msg_id: str) -> None:
        try:
            while True:
                msg = json.loads(self.ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                content = msg["content"]
                if msg["msg_type"] == "status" and content["execution_state"] == "idle":
                    return
                if msg["msg_type"] == "stream":
                    self.shown[content["name"]] += content["text"]
                elif msg["msg_type"] in ("display_data", "execute_result"):
                    self.shown["displayed"] += content["data"].get("text/plain", "")
                elif msg["msg_type"] == "error":
                    self.shown["errors"].append(content)
        finally:
            self.ws.close()

    def result(self, timeout: float = 120) -> dict:
        self.runner.join(timeout)
        assert not self.runner.is_alive(), f"the cell still runs after {timeout}s: {self.shown}"
        return self.shown


def cell(user, kernel: str, code: str, timeout: float = 120) -> dict:
    """What the cell showed, once it ran."""
    return Cell(user, kernel, code, timeout).result(timeout)


def job(user, name: str) -> dict:
    r = user.session.get(user.hub.api(f"/gpulab/jobs/{name}"), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def replica_log(user, name: str, replica: str) -> str:
    r = user.session.get(
        user.hub.api(f"/gpulab/jobs/{name}/logs"), params={"replica": replica}, timeout=30
    )
    assert r.status_code == 200, r.text
    return r.text


RANKS = """%%gpulab_job --workers 2 --env GREETING=hello
import os
print(os.environ["GREETING"], "from replica", os.environ["GPULAB_REPLICA_INDEX"], "of",
      os.environ["GPULAB_REPLICAS"], "in", os.getcwd(), flush=True)
print("gpulab-metric: loss=0.25")
"""


def test_gpulab_in_a_kernel_and_a_cell_run_as_a_job(hub):
    alice = hub.create_user("alice")
    assert alice.spawn().status_code in (201, 202)
    make_folder(alice, "work")
    kernel = open_notebook(alice, "work/train.ipynb")

    # the magics are there at start, and cost the kernel no import of the hub's client
    loaded = run(
        alice,
        kernel,
        "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] == 'gpulab'))",
    )
    assert loaded.strip() == "['gpulab', 'gpulab.magics']"
    pool = run(alice, kernel, "import gpulab; print(gpulab.gpus()['total'], gpulab.jobs())")
    assert pool.split() == ["0", "[]"]

    shown = cell(alice, kernel, RANKS)
    assert shown["errors"] == [], shown
    out = shown["stdout"]
    workdir = home(hub, "alice") / "work"
    # the first replica's log, as it ran, in the notebook's folder
    assert f"hello from replica 0 of 2 in {workdir}" in out, out
    assert "from replica 1" not in out
    assert re.search(r"Job (cell-[0-9a-f]{8}) succeeded: loss=0\.25\s*$", out), out
    name = re.search(r"Job (cell-[0-9a-f]{8}) succeeded", out).group(1)
    done = job(alice, name)
    assert done["state"] == "succeeded" and done["metrics"] == {"loss": 0.25}
    assert f"hello from replica 1 of 2 in {workdir}" in replica_log(alice, name, "worker-1")
    # the cell is kept in the home, named by its code
    cells = list((home(hub, "alice") / ".gpulab/cells").glob("*.py"))
    assert [p.read_text() for p in cells] == [RANKS.split("\n", 1)[1]]
    assert cells[0].stat().st_uid == pwd.getpwnam(hub.unix_account("alice")).pw_uid

    # the same cell again is a job of its own
    again = cell(alice, kernel, RANKS)
    assert f"Job {name}-2 succeeded" in again["stdout"], again

    listed = cell(alice, kernel, "%gpulab_jobs")
    rows = [line.split() for line in listed["displayed"].splitlines()]
    assert rows[0][:3] == ["name", "framework", "state"]
    assert [r[:3] for r in rows[1:]] == [
        [name, "plain", "succeeded"],
        [f"{name}-2", "plain", "succeeded"],
    ]

    # a job the hub refuses: its message, in one line, and no traceback
    refused = cell(alice, kernel, "%%gpulab_job --workers 0\nprint('never')")
    assert refused["stdout"] == ""
    [error] = refused["errors"]
    assert error["ename"] == "JobCellError"
    assert error["evalue"].startswith("job not submitted: 400: ")
    assert "replicas.worker.count" in error["evalue"], error
    assert len(error["traceback"]) == 1 and "Traceback" not in error["traceback"][0]
    assert job(alice, name)["state"] == "succeeded"  # nothing else changed
    bad = cell(alice, kernel, "%%gpulab_job --env NOEQUALS\nprint('never')")
    assert "UsageError: --env takes KEY=VALUE" in bad["stderr"], bad


SLEEPER = """%%gpulab_job --name sleeper
import time
print("started", flush=True)
time.sleep(600)
"""


def test_interrupting_a_job_cell_cancels_its_job(hub):
    alice = hub.create_user("alice")
    assert alice.spawn().status_code in (201, 202)
    kernel = open_notebook(alice, "long.ipynb")
    running = Cell(alice, kernel, SLEEPER)
    # the log shows under the cell while the job runs
    wait_for(lambda: "started" in running.shown["stdout"], 60, "the job's log in the cell")
    assert job(alice, "sleeper")["state"] == "running"
    r = alice.session.post(f"{alice.server_url}/api/kernels/{kernel}/interrupt", timeout=30)
    assert r.status_code == 204, r.text
    shown = running.result(60)
    assert job(alice, "sleeper")["state"] == "cancelled"
    assert "Job sleeper: cancelled" in shown["stdout"], shown
    assert [e["evalue"] for e in shown["errors"]] == ["interrupted: job sleeper cancelled"]
    # the kernel goes on
    assert run(alice, kernel, "print('still here')").strip() == "still here"


def code_cells(path: Path) -> list[str]:
    notebook = json.loads(path.read_text())
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def visible(listing: dict) -> list[str]:
    """What the file browser shows of a folder: JupyterLab hides dot files (the server
    lists them, so that the lab can open a job's output notebook in ~/.gpulab)."""
    return sorted(i["name"] for i in listing["content"] if not i["name"].startswith("."))


def test_a_new_home_gets_the_welcome_notebook_once_and_its_cells_run(hub):
    bob = hub.create_user("bob")
    assert bob.spawn().status_code in (201, 202)
    r = bob.server_get("/api/contents/")
    assert r.status_code == 200, r.text
    assert visible(r.json()) == [WELCOME]
    notebook = home(hub, "bob") / WELCOME
    account = pwd.getpwnam(hub.unix_account("bob"))
    assert notebook.stat().st_uid == account.pw_uid
    assert (home(hub, "bob") / ".gpulab/welcomed").exists()

    # every cell runs, top to bottom, in the notebook's own kernel, on a hub without GPUs
    kernel = open_notebook(bob, WELCOME)
    outputs = []
    for code in code_cells(notebook):
        shown = cell(bob, kernel, code, timeout=240)
        assert shown["errors"] == [], (code, shown)
        outputs.append(shown["stdout"] + shown["displayed"])
    text = "\n".join(outputs)
    assert "0 of 0 GPUs free on this hub" in outputs[0]
    assert "still here after Return GPU: {'accuracy': 0.93" in text
    assert re.search(r"replica 0 of 2 on .*, GPUs: none", text), text
    assert re.search(r"Job cell-[0-9a-f]{8} succeeded: answer=42", text), text
    assert "rank 0 of 2" in text and "\nsucceeded\n" in text
    assert "model welcome-line available" in text
    assert "{'predictions': [2.5, 3.0]}" in text
    assert "undeployed" in text
    assert "wrote runs/welcome" in text and list((home(hub, "bob") / "runs/welcome").iterdir())
    assert "This hub has no S3 storage" in text

    # deleted, it does not come back at the next start
    r = bob.session.delete(f"{bob.server_url}/api/contents/{WELCOME}", timeout=30)
    assert r.status_code == 204, r.text
    assert bob.stop().status_code in (202, 204)
    assert bob.spawn().status_code in (201, 202)
    names = visible(bob.server_get("/api/contents/").json())
    assert WELCOME not in names and "models" in names


def test_a_home_with_files_gets_no_welcome_notebook(hub):
    from gpulab.spawner.accounts import ensure_account

    carol = hub.create_user("carol")
    account = ensure_account(hub.unix_prefix, "carol", hub.data_root)
    notes = account.home / "notes.txt"
    notes.write_text("mine")
    os.chown(notes, account.uid, account.gid)
    assert carol.spawn().status_code in (201, 202)
    assert visible(carol.server_get("/api/contents/").json()) == ["notes.txt"]
    assert (account.home / ".gpulab/welcomed").exists()
