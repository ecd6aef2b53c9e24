"""TensorBoard in a user's server, opened through jupyter-server-proxy.

As a user does it: scalars written in a kernel, ``tensorboard`` and ``gpulab
tensorboard`` typed into a JupyterLab terminal (its REST API and websocket), the page
and its data fetched at ``/user/<name>/proxy/<port>/`` with the user's token, and
``%tensorboard`` run inline in a notebook kernel.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests
import websocket

from gpulab.hub.client.tensorboard import tensorboard_url
from hubfixture import free_port, kernel_messages, wait_for

WRITE_RUN = """
from tensorboard.summary import Writer  # TensorBoard's own writer: no TensorFlow, no torch

writer = Writer("runs/{run}")
for step in range(5):
    writer.add_scalar("loss", 1.0 / (step + 1), step=step)
writer.close()
print("written")
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")


class Terminal:
    """A JupyterLab terminal of a user's server, driven over its websocket."""

    def __init__(self, user):
        r = user.session.post(user.server_url + "/api/terminals", timeout=30)
        assert r.status_code == 200, r.text
        self.name = r.json()["name"]
        url = user.server_url.replace("http://", "ws://") + f"/terminals/websocket/{self.name}"
        self.ws = websocket.create_connection(
            url, header=[f"Authorization: token {user.token}"], timeout=30
        )
        self.output = ""  # what the terminal showed, escape sequences removed
        self.ws.send(json.dumps(["set_size", 50, 400]))  # wide: typed lines never wrap

    def type(self, text: str) -> None:
        self.ws.send(json.dumps(["stdin", text]))

    def run(self, line: str) -> None:
        self.type(line + "\r")

    def interrupt(self) -> None:
        self.type("\x03")

    def expect(self, pattern: str, timeout: float = 30, flags: int = 0) -> re.Match:
        """Wait until what the terminal shows since the last match matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.output, flags)
            if found:
                self.output = self.output[found.end() :]
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"terminal never showed {pattern!r} in {timeout}s; it showed:\n{self.output}"
                )
            self.ws.settimeout(left)
            try:
                message = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            if message[0] == "stdout":
                self.output += ANSI.sub("", message[1]).replace("\r", "")

    def command(self, line: str, timeout: float = 30) -> tuple[str, int]:
        """Run ``line`` to its end; what it printed and its exit status."""
        mark = uuid.uuid4().hex[:8]
        # the echo of the typed line shows `$?`, only the shell's answer a number
        self.run(f'{line}; echo "{mark}-status-$?"')
        found = self.expect(rf'{mark}-status-\$\?"\n(.*?){mark}-status-(\d+)', timeout, re.S)
        return found.group(1), int(found.group(2))

    def close(self) -> None:
        self.ws.close()


def assert_commands_found(term: Terminal) -> None:
    """What users type must be found: the terminal (a login shell) keeps the server's PATH."""
    out, status = term.command('command -v tensorboard gpulab || { echo "PATH=$PATH"; false; }')
    assert status == 0, (
        f"tensorboard and gpulab are not on the PATH of a JupyterLab terminal:\n{out}"
    )


def proxied(user, port: int, path: str = "") -> str:
    return f"{user.server_url}/proxy/{port}/{path}"


def wait_for_tensorboard(user, url: str, timeout: float = 45) -> None:
    """Until TensorBoard's own page answers at ``url`` through the hub and the server's proxy."""

    def page():
        r = user.session.get(url, timeout=10)
        return r.status_code == 200 and "tb-relative-root" in r.text

    wait_for(page, timeout, f"TensorBoard's page at {url}", interval=0.5)


def check_run_through_proxy(user, port: int, run: str) -> None:
    """TensorBoard's data API, through the proxy, serves the scalars the kernel wrote."""
    runs = user.session.get(proxied(user, port, "data/runs"), timeout=10)
    assert runs.status_code == 200, runs.text
    assert run in runs.json()
    scalars = user.session.get(
        proxied(user, port, "data/plugin/scalars/scalars"),
        params={"run": run, "tag": "loss"},
        timeout=10,
    )
    assert scalars.status_code == 200, scalars.text
    points = scalars.json()
    assert [step for _, step, _ in points] == [0, 1, 2, 3, 4]
    assert [round(value, 3) for _, _, value in points] == [1.0, 0.5, 0.333, 0.25, 0.2]


def loopback_port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def stop_and_check_nothing_left(hub, user) -> None:
    assert user.stop().status_code in (202, 204)
    wait_for(lambda: hub.unix_pids(user.name) == [], 30, f"{user.name}'s processes to end")


def start_with_run(hub, name: str, run: str):
    user = hub.create_user(name)
    r = user.spawn(profile="cpu")
    assert r.status_code in (201, 202), r.text
    assert user.run(WRITE_RUN.format(run=run)).strip() == "written"
    return user


def test_tensorboard_typed_in_a_terminal_answers_through_the_proxy(hub):
    alice = start_with_run(hub, "alice", "first")
    term = Terminal(alice)
    try:
        assert_commands_found(term)
        term.run("tensorboard --logdir runs --port 6006")
        wait_for_tensorboard(alice, proxied(alice, 6006))
        check_run_through_proxy(alice, 6006, "first")
        # without the user's token the hub lets nobody through
        anonymous = requests.get(
            proxied(alice, 6006, "data/runs"), allow_redirects=False, timeout=10
        )
        assert anonymous.status_code in (302, 401, 403), anonymous.status_code

        term.interrupt()  # Ctrl-C: TensorBoard stops, the terminal is back at its prompt
        wait_for(lambda: loopback_port_free(6006), 15, "TensorBoard to stop on Ctrl-C")
        _, status = term.command("true")
        assert status == 0
    finally:
        term.close()
    stop_and_check_nothing_left(hub, alice)


def test_gpulab_tensorboard_prints_the_proxy_url_and_takes_the_next_free_port(hub):
    bob = start_with_run(hub, "bob", "second")
    first, second = Terminal(bob), Terminal(bob)
    try:
        assert_commands_found(first)
        first.run("gpulab tensorboard --logdir runs")
        url = first.expect(r"TensorBoard: (\S+)").group(1)
        assert url == "/user/bob/proxy/6006/"  # no public URL configured: the path on the hub
        wait_for_tensorboard(bob, hub.url + url)
        check_run_through_proxy(bob, 6006, "second")

        # 6006 is taken now: an explicit --port fails cleanly, no port fails over to 6007
        out, status = second.command("gpulab tensorboard --port 6006")
        assert status == 1, out
        assert "port 6006 is already in use" in out and "Traceback" not in out
        out, status = second.command("gpulab tensorboard --port sixty")
        assert status == 2, out
        assert "'sixty' is not a port number" in out and "Traceback" not in out
        # TensorBoard's own exit status comes through (its argument error: 2)
        out, status = second.command("gpulab tensorboard --no_such_flag", timeout=45)
        assert status == 2, out
        assert "unrecognized arguments: --no_such_flag" in out

        # once the lab has been open (it polls the GPU status), the link is a whole URL, at
        # the address the browser used, and TensorBoard's own loopback line says it too
        assert bob.session.get(bob.server_url + "/gpulab/gpu", timeout=30).status_code == 200
        second.run("gpulab tensorboard --logdir runs")
        second.expect(r"Port 6006 is in use; using port 6007")
        url = second.expect(r"TensorBoard: (\S+)").group(1)
        assert url == f"{hub.url}/user/bob/proxy/6007/"
        second.expect(rf"TensorBoard \S+ at {re.escape(url)} \(Press CTRL\+C to quit\)", 60)
        assert "localhost:6007" not in second.output
        wait_for_tensorboard(bob, url)
        check_run_through_proxy(bob, 6007, "second")

        # Ctrl-C stops it: the prompt is back, with TensorBoard's own exit status
        second.interrupt()
        out, _ = second.command("echo last=$?", timeout=15)
        assert "last=0" in out, out
        assert loopback_port_free(6007)
        assert not loopback_port_free(6006)  # the first one still runs...
    finally:
        first.close()
        second.close()
    stop_and_check_nothing_left(hub, bob)  # ...until the server stops
    assert loopback_port_free(6006)


def test_the_lab_opens_a_tensorboard_per_folder_through_the_server(hub):
    dana = start_with_run(hub, "dana", "fourth")
    base = dana.server_url + "/gpulab/tensorboard"
    r = dana.session.post(base, json={"logdir": "runs"}, timeout=30)
    assert r.status_code == 201, r.text
    board = r.json()
    assert board["started"] is True and board["logdir"] == "runs"
    assert board["url"] == f"/user/dana/proxy/{board['port']}/"
    wait_for_tensorboard(dana, hub.url + board["url"])
    check_run_through_proxy(dana, board["port"], "fourth")
    # the same folder again: the one running; the list shows it
    again = dana.session.post(base, json={"logdir": "./runs/"}, timeout=30)
    assert again.status_code == 200 and again.json()["port"] == board["port"], again.text
    listed = dana.session.get(base, timeout=30).json()["tensorboards"]
    assert [(b["logdir"], b["port"], b["state"]) for b in listed] == [
        ("runs", board["port"], "running")
    ]
    # folders outside the home, or none at all, are refused with a message
    for logdir, status, words in [
        ("../../etc", 400, "outside your home"),
        ("/etc", 404, "is not a folder"),  # a path from the home's root, which has no etc
        ("nosuch", 404, "nosuch is not a folder"),
        (5, 400, "must be a folder"),
    ]:
        r = dana.session.post(base, json={"logdir": logdir}, timeout=30)
        assert r.status_code == status and words in r.json()["message"], (logdir, r.text)
    # stopped from the lab: its port is free again
    assert dana.session.delete(f"{base}/{board['port']}", timeout=30).status_code == 204
    assert loopback_port_free(board["port"])
    assert dana.session.delete(f"{base}/{board['port']}", timeout=30).status_code == 404
    assert dana.session.get(base, timeout=30).json()["tensorboards"] == []
    # one left running ends with the server
    r = dana.session.post(base, json={"logdir": ""}, timeout=30)
    assert r.status_code == 201, r.text
    stop_and_check_nothing_left(hub, dana)


def execute_collecting_displays(user, kernel_id: str, code: str, timeout: float = 90) -> list:
    """Run ``code`` in a kernel; every display_data / update_display_data it showed.

    What ``User.run`` leaves out: rich output (HTML, Javascript) shown in a notebook.
    """
    shown: list[dict] = []
    for msg in kernel_messages(user.server_url, kernel_id, user.token, code, timeout):
        kind = msg["msg_type"]
        if kind in ("display_data", "update_display_data", "execute_result"):
            shown.append(msg["content"]["data"])
        elif kind == "stream":
            shown.append({"text/plain": msg["content"]["text"]})
        elif kind == "error":
            raise AssertionError("kernel error: " + "\n".join(msg["content"]["traceback"]))
    return shown


def test_tensorboard_magic_inline_frames_the_proxy_url(hub):
    carol = start_with_run(hub, "carol", "third")
    # the notebook's kernel stays open, as while someone looks at the frame
    r = carol.session.post(carol.server_url + "/api/kernels", json={"name": "python3"}, timeout=60)
    assert r.status_code == 201, r.text
    kernel_id = r.json()["id"]
    shown = execute_collecting_displays(
        carol, kernel_id, "%load_ext tensorboard\n%tensorboard --logdir runs --port 6007"
    )
    frames = [d["text/html"] for d in shown if "<iframe" in d.get("text/html", "")]
    assert frames, f"no TensorBoard frame was displayed: {shown}"
    # the frame opens the proxy path relative to the page, not localhost:6007
    assert 'new URL("/user/carol/proxy/6007/", window.location)' in frames[-1]
    assert "const port = 0;" in frames[-1]
    # and what the frame opens is TensorBoard, through the hub and the server's proxy
    wait_for_tensorboard(carol, hub.url + "/user/carol/proxy/6007/")
    check_run_through_proxy(carol, 6007, "third")
    stop_and_check_nothing_left(hub, carol)
    assert loopback_port_free(6007)


def test_tensorboard_url_follows_what_jupyterhub_tells_the_server():
    assert tensorboard_url(6006, {}) == "http://localhost:6006/"
    assert tensorboard_url(6006, {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"}) == (
        "/user/alice/proxy/6006/"
    )
    named = {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/gpu/", "JUPYTERHUB_PUBLIC_URL": ""}
    assert tensorboard_url(6007, named) == "/user/alice/gpu/proxy/6007/"
    public = {
        "JUPYTERHUB_SERVICE_PREFIX": "/hub-prefix/user/alice/",
        "JUPYTERHUB_PUBLIC_URL": "https://gpu.example.org/hub-prefix/user/alice/",
        "JUPYTERHUB_HOST": "https://gpu.example.org",
    }
    assert tensorboard_url(6006, public) == (
        "https://gpu.example.org/hub-prefix/user/alice/proxy/6006/"
    )
    host_only = {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/", "JUPYTERHUB_HOST": "https://h.org"}
    assert tensorboard_url(6006, host_only) == "https://h.org/user/alice/proxy/6006/"


def test_gpulab_tensorboard_outside_a_hub_prints_the_local_url(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    gpulab = [str(Path(sys.prefix) / "bin" / "gpulab"), "tensorboard"]
    port = free_port()
    proc = subprocess.Popen(
        [*gpulab, "--logdir", str(tmp_path / "runs"), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("TensorBoard:"):
                break
        assert lines[-1].strip() == f"TensorBoard: http://localhost:{port}/", lines
        assert any("does not exist yet" in line for line in lines), lines

        def page():
            return "tb-relative-root" in requests.get(f"http://127.0.0.1:{port}/", timeout=5).text

        wait_for(page, 45, "TensorBoard on loopback", interval=0.5)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(20) == 0  # TensorBoard's own exit status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
