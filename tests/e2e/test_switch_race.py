"""Return and Get GPU while the user keeps running cells: nothing runs in a half-switched
kernel, and no checkpoint is lost.

A client speaks the kernel protocol over the server's websocket, as JupyterLab does,
and sends cells in a tight loop while the server's GPU is returned and got back fifty
times at random moments; every cell must run exactly once, in order, with the variables
the cells before it made. A restore that fails (the notebook's own module was deleted)
must keep its checkpoint, say why, answer the cells sent meanwhile with that reason
instead of running them in an empty kernel, and be restorable later from the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path

import websocket

from hubfixture import execute_request, gpulab, open_notebook, run, wait_for

CELL = "n += 1\nprint(n)"


def gpu_state(user) -> dict:
    r = user.session.get(user.server_url + "/gpulab/gpu", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def settled(user) -> dict | None:
    """The server's GPU state once no operation, switch or restore is under way."""
    s = gpu_state(user)
    op = s.get("operation") or {}
    busy = op.get("state") in ("queued", "checkpointing", "restoring") or s["switching"]
    return None if busy or s["restore"]["state"] == "restoring" else s


class KernelClient:
    """A kernel's websocket, as a notebook uses it: execute requests out, replies and
    output in (read by a thread of its own)."""

    def __init__(self, user, kernel: str):
        url = user.server_url.replace("http://", "ws://") + f"/api/kernels/{kernel}/channels"
        self.session = uuid.uuid4().hex
        self.ws = websocket.create_connection(
            f"{url}?session_id={self.session}",
            header=[f"Authorization: token {user.token}"],
            timeout=300,
        )
        self.lock = threading.Lock()
        self.sent: list[str] = []
        self.replies: list[tuple[str, dict]] = []  # (request id, content), as they came
        self.stdout: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.closed = threading.Event()
        self.ended = ""  # why the reader or the sender stopped early, for a failure's report
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def execute(self, code: str) -> str:
        message = execute_request(code, self.session, store_history=True)
        msg_id = message["header"]["msg_id"]
        with self.lock:
            self.sent.append(msg_id)
            self.ws.send(json.dumps(message))
        return msg_id

    def _read(self) -> None:
        while not self.closed.is_set():
            try:
                msg = json.loads(self.ws.recv())
            except (websocket.WebSocketException, OSError, ValueError) as e:
                if not self.closed.is_set():
                    self.ended += f" reader stopped: {e!r};"
                return
            parent = (msg.get("parent_header") or {}).get("msg_id")
            kind = msg["header"]["msg_type"]
            with self.lock:
                if kind == "execute_reply":
                    self.replies.append((parent, msg["content"]))
                elif kind == "stream" and msg["content"]["name"] == "stdout":
                    self.stdout[parent] = self.stdout.get(parent, "") + msg["content"]["text"]
                elif kind == "error":
                    self.errors[parent] = msg["content"]["evalue"]

    def answered(self) -> bool:
        with self.lock:
            return len(self.replies) >= len(self.sent)

    def unanswered(self) -> str:
        """Which cells have no reply yet, and what each printed: for a failure's report."""
        with self.lock:
            replied = {parent for parent, _ in self.replies}
            missing = [(i, m) for i, m in enumerate(self.sent) if m not in replied]
            return f"{len(missing)} of {len(self.sent)} cells unanswered: " + ", ".join(
                f"#{i} {m[:8]} printed {self.stdout.get(m, '')!r}" for i, m in missing[:10]
            )

    def close(self) -> None:
        self.closed.set()
        self.ws.close()


def test_cells_sent_while_the_gpu_moves_run_once_in_order_with_their_variables(hub):
    user = hub.create_user("race")
    assert user.spawn(profile="gpu-1").status_code in (201, 202)
    kernel = open_notebook(user, "race.ipynb")
    run(user, kernel, "n = 0")
    client = KernelClient(user, kernel)
    stop = threading.Event()
    rng = random.Random(22)

    def send() -> None:
        while not stop.is_set():
            try:
                client.execute(CELL)
            except (websocket.WebSocketException, OSError) as e:
                client.ended += f" sender stopped: {e!r};"
                return
            time.sleep(rng.uniform(0, 0.03))

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    switches = []
    try:
        for _ in range(50):
            time.sleep(rng.uniform(0, 0.3))  # the click lands anywhere among the cells
            switches.append(switch(user))
        wait_for(lambda: settled(user), 120, "the last switch to be over")
    finally:
        stop.set()
        sender.join(10)
    sent = ran_once_in_order(client)
    assert switches.count("return") == 25 and switches.count("get") == 25
    assert len(sent) > 200, "too few cells ran during the switches to prove anything"
    assert run(user, kernel, "print(n)").strip() == str(len(sent))


def switch(user) -> str:
    """Return or Get GPU once the last switch is over: which one."""
    state = wait_for(lambda: settled(user), 120, "the last switch to be over")
    action = "return" if state["gpus"] else "get"
    r = user.session.post(f"{user.server_url}/gpulab/gpu/{action}", json={}, timeout=120)
    assert r.status_code in (200, 202), r.text
    return action


def ran_once_in_order(client: KernelClient) -> list[str]:
    """Once every cell of ``client`` (each ``CELL``) is answered: the cells sent, having
    checked that each ran exactly once, in order, with the variables of those before."""
    try:
        try:
            wait_for(client.answered, 120, "every cell to be answered")
        except TimeoutError as e:
            raise AssertionError(f"{e}: {client.unanswered()}") from None
        with client.lock:
            sent, replies = list(client.sent), list(client.replies)
            stdout, errors = dict(client.stdout), dict(client.errors)
    finally:
        client.close()
    # exactly one reply for each cell, in the order they were sent
    assert [parent for parent, _ in replies] == sent
    failed = {p: c.get("evalue") or c.get("status") for p, c in replies if c["status"] != "ok"}
    assert not failed and not errors, f"cells failed: {failed or errors}"
    # each saw what the ones before it made: none ran in a fresh kernel, none was lost
    assert [stdout.get(m, "").strip() for m in sent] == [str(i) for i in range(1, len(sent) + 1)]
    return sent


def kernel_pids(kernel: str) -> list[int]:
    """The processes of the kernel (by its connection file's name)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and f"kernel-{kernel}.json".encode() in (proc / "cmdline").read_bytes()
            ):
                pids.append(int(proc.name))
        except OSError:  # ended meanwhile
            continue
    return pids


def starve(kernel: str, stop: threading.Event) -> None:
    """Give the kernel's process a sliver of the CPU (as every core busy with other work
    would), until ``stop``: stopped 50 ms, running 5 ms."""
    while not stop.is_set():
        pids = kernel_pids(kernel)
        for signal_ in (signal.SIGSTOP, signal.SIGCONT):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal_)
            time.sleep(0.05 if signal_ == signal.SIGSTOP else 0.005)
    for pid in kernel_pids(kernel):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_cells_a_starved_kernel_has_not_read_yet_run_before_its_checkpoint(hub):
    """The kernel reads the cells a tab sent and the switch's checkpoint request from
    different sockets, in turn: the checkpoint must not overtake cells sent before it."""
    user = hub.create_user("starved")
    assert user.spawn(profile="gpu-1").status_code in (201, 202)
    kernel = open_notebook(user, "starved.ipynb")
    run(user, kernel, "n = 0")
    client = KernelClient(user, kernel)
    stop = threading.Event()
    starver = threading.Thread(target=starve, args=(kernel, stop), daemon=True)
    starver.start()
    try:
        for _ in range(6):
            for _ in range(40):  # a burst of cells, then the click
                client.execute(CELL)
            action = switch(user)
            state = wait_for(lambda: settled(user), 120, "the switch to be over")
            assert (state["operation"] or {}).get("state") != "failed", state["operation"]
            assert bool(state["gpus"]) == (action == "get"), state
    finally:
        stop.set()
        starver.join(10)
    sent = ran_once_in_order(client)
    assert run(user, kernel, "print(n)").strip() == str(len(sent)) == "240"


MODULE = "class Thing:\n    def __init__(self, n):\n        self.n = n\n"


def test_a_restore_that_fails_keeps_its_checkpoint_says_why_and_runs_no_cell_without_it(hub):
    user = hub.create_user("lost")
    assert user.spawn(profile="gpu-1").status_code in (201, 202)
    kernel = open_notebook(user, "work.ipynb")
    run(
        user,
        kernel,
        f"open('thing.py', 'w').write({MODULE!r})\nimport thing\nkeep = thing.Thing(5)\nx = 41",
    )
    # the notebook's own module goes away: its objects cannot be loaded again
    run(user, kernel, "import os\nos.rename('thing.py', 'thing.py.away')")
    client = KernelClient(user, kernel)
    try:
        r = user.session.post(user.server_url + "/gpulab/gpu/return", json={}, timeout=120)
        assert r.status_code == 200, r.text
        late = client.execute("x += 1\nprint(x)")  # sent while the variables are restored
        restore = wait_for(lambda: (s := settled(user)) and s["restore"], 120, "the restore")
        wait_for(client.answered, 60, "the late cell to be answered")
        with client.lock:
            reply = dict(client.replies)[late]
            error = client.errors.get(late, "")
    finally:
        client.close()
    assert restore["state"] == "failed"
    note = restore["kernels"][0]["note"]
    assert "No module named 'thing'" in note and "they are kept in" in note, note
    # the cell was not run in the kernel that lacks the variables: it says why
    assert reply["status"] == "error" and reply["ename"] == "NotRun"
    assert "No module named 'thing'" in error, error

    listing = gpulab(hub, user.token, "gpu", "checkpoints", "--json")
    assert listing.returncode == 0, listing.stderr
    kept = [c for c in json.loads(listing.stdout) if c["notebook"] == "work.ipynb"]
    assert [c["state"] for c in kept] == ["not restored"], kept
    assert "No module named 'thing'" in kept[0]["why"]

    # the next switch saves an empty kernel: it must not take the place of the kept one
    r = user.session.post(user.server_url + "/gpulab/gpu/get", json={}, timeout=120)
    assert r.status_code in (200, 202), r.text
    wait_for(lambda: settled(user) and settled(user)["gpus"], 120, "Get GPU")
    listing = gpulab(hub, user.token, "gpu", "checkpoints", "--json")
    ids = [c["id"] for c in json.loads(listing.stdout) if c["notebook"] == "work.ipynb"]
    assert ids == [kept[0]["id"]]

    # the module is back: the checkpoint restores into the notebook's kernel, on request
    run(user, kernel, "import os\nos.rename('thing.py.away', 'thing.py')")
    out = gpulab(hub, user.token, "gpu", "checkpoints", "restore", kept[0]["id"])
    assert out.returncode == 0, out.stderr
    # keep, x and the two modules the notebook imported
    assert "Restored 4 variables into work.ipynb" in out.stdout, out.stdout
    assert run(user, kernel, "print(keep.n, x)").strip() == "5 41"
    listing = gpulab(hub, user.token, "gpu", "checkpoints")
    assert listing.returncode == 0 and "restored" in listing.stdout, listing.stdout
    out = gpulab(hub, user.token, "gpu", "checkpoints", "restore", "nope")
    assert out.returncode == 1 and "there is no checkpoint 'nope'" in out.stderr, out.stderr


FILL_HOME = """
import errno
with open("filler", "wb", buffering=0) as f:
    for size in (1 << 20, 1 << 12, 1):  # up to the last byte the quota allows
        try:
            while True:
                f.write(b"\\0" * size)
        except OSError as e:
            error = errno.errorcode[e.errno]
print(error)
"""


def test_a_checkpoint_restores_into_a_full_home_and_a_switch_says_why_it_cannot_save(make_hub):
    hub = make_hub(
        {"gpus": {"ids": ["0"]}, "storage": {"home_quota": True, "home_size": "64MiB"}}
    ).start()
    gus = hub.create_user("gus")
    assert gus.spawn(profile="gpu-1").status_code in (201, 202)
    kernel = open_notebook(gus, "full.ipynb")
    run(gus, kernel, "x = 41\nsteps = list(range(5))")
    r = gus.session.post(gus.server_url + "/gpulab/gpu/return", json={}, timeout=120)
    assert r.status_code == 200, r.text
    assert wait_for(lambda: settled(gus), 120, "the restore")["restore"]["state"] == "done"
    (taken,) = json.loads(gpulab(hub, gus.token, "gpu", "checkpoints", "--json").stdout)

    # the kernel starts afresh, and the home fills up
    r = gus.session.post(f"{gus.server_url}/api/kernels/{kernel}/restart", timeout=60)
    assert r.status_code == 200, r.text
    assert run(gus, kernel, "print('x' in globals())").strip() == "False"
    assert run(gus, kernel, FILL_HOME).strip() in ("ENOSPC", "EDQUOT")
    out = gpulab(hub, gus.token, "gpu", "checkpoints", "restore", taken["id"])
    assert out.returncode == 0, out.stderr
    assert "Restored 2 variables into full.ipynb" in out.stdout, out.stdout
    assert run(gus, kernel, "print(x, steps)").strip() == "41 [0, 1, 2, 3, 4]"

    # a switch cannot save the kernel now: it says why, and nothing changes
    r = gus.session.post(gus.server_url + "/gpulab/gpu/get", json={}, timeout=120)
    assert r.status_code in (200, 202), r.text
    op = wait_for(lambda: (s := settled(gus)) and s["operation"], 120, "Get GPU to end")
    assert op["state"] == "failed" and "Free some space in your home" in op["message"], op
    assert run(gus, kernel, "print(x)").strip() == "41"
