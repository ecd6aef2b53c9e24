"""Issue 20, finding 4: another user takes over a model server's listeners.

A model server's addresses are in its command line (``/proc/PID/cmdline`` is
world-readable) and it listens only once its model has loaded. Mallory, with a shell in
her own server, runs a watcher that reads every model server's command line, binds its
addresses first and answers like a model server (recording every byte it is sent), and
tries to reach the others directly. Alice deploys a model meanwhile. Alice's token must
never reach Mallory, Alice's calls through the hub must get her model's real answers,
and her server must start on its first try.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

from hubfixture import export_to_home, wait_for

X = [1.0, 2.0, 5.0]
WANT = [2.5, 3.0, 4.5]  # y = 0.5x + 2

# Runs as Mallory, started from a kernel of her own server. It finds every model server
# that is not hers by its command line (and any address the test hands it, as one could
# learn it any other way), tries to bind each address first (TCP ports on loopback,
# unix socket paths) and answers there as a model server that serves: status AVAILABLE,
# predictions 666. Where it cannot bind, it tries to connect, as a client would.
# Its findings go to ~/watch.json, rewritten whole.
WATCHER = r'''
import json, os, socket, sys, threading, time

HOME = os.path.expanduser("~")
STATE = os.path.join(HOME, "watch.json")
HINTS = os.path.join(HOME, "hints.json")
ME = os.getuid()
state = {"pid": os.getpid(), "seen": {}, "bound": [], "bind_errors": {}, "reached": {},
         "connect_errors": {}, "accepted": 0, "received": []}
lock = threading.Lock()
saving = threading.Lock()
held = []


def save():
    # one writer at a time: two threads sharing the .tmp file made one os.replace fail,
    # and when that was the main thread the watcher died and stopped accepting
    with saving:
        with lock:
            text = json.dumps(state)
        tmp = STATE + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, STATE)


def answer(conn):
    conn.settimeout(5)
    data = b""
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip() or 0)
                if len(body) >= length:
                    break
        with lock:
            state["received"].append(data.decode("latin-1"))
        if data.startswith(b"POST"):
            out = b'{"predictions": [666.0, 666.0, 666.0]}'
        else:
            out = json.dumps({"model_version_status": [{"version": "1", "state": "AVAILABLE",
                             "status": {"error_code": "OK", "error_message": ""}}]}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(out)).encode() + b"\r\nConnection: close\r\n\r\n" + out)
    except OSError:
        pass
    finally:
        conn.close()
        save()


def serve(sock):
    while True:
        conn, _ = sock.accept()
        with lock:
            state["accepted"] += 1
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def addresses(argv):
    """The addresses a model server command line names: ("tcp", port) or ("unix", path)."""
    out = []
    for i, arg in enumerate(argv[:-1]):
        value = argv[i + 1]
        if arg in ("--port", "--rest_api_port") and value.isdigit() and int(value):
            out.append(f"tcp:{value}")
        elif arg.endswith("_socket_path") and value:
            out.append(f"unix:{value}")
    return out


def targets():
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid == ME:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "gpulab.serving" in argv and not argv[0].endswith("sh"):
            found[pid] = addresses(argv)
    try:
        with open(HINTS) as f:
            found["hints"] = json.load(f)
    except (OSError, ValueError):
        pass
    return found


def attempt(address):
    kind, _, where = address.partition(":")
    family = socket.AF_INET if kind == "tcp" else socket.AF_UNIX
    place = ("127.0.0.1", int(where)) if kind == "tcp" else where
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if kind == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(place)
        sock.listen(64)
    except OSError as e:
        sock.close()
        with lock:
            state["bind_errors"][address] = e.strerror or str(e)
    else:
        held.append(sock)
        with lock:
            state["bound"].append(address)
        threading.Thread(target=serve, args=(sock,), daemon=True).start()
        return
    # not ours: call it as a client would, without the token
    client = socket.socket(family, socket.SOCK_STREAM)
    client.settimeout(3)
    try:
        client.connect(place)
        client.sendall(b"GET /v1/models/line HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = client.recv(200).decode("latin-1").split("\r\n")[0]
        with lock:
            state["reached"][address] = reply
    except OSError as e:
        with lock:
            state["connect_errors"][address] = e.strerror or str(e)
    finally:
        client.close()


deadline = time.monotonic() + float(sys.argv[1])
save()
while time.monotonic() < deadline:
    changed = False
    for pid, found in targets().items():
        for address in found:
            with lock:
                done = address in state["bound"] or address in state["reached"]
                sources = state["seen"].setdefault(address, [])
                if pid not in sources:
                    sources.append(pid)
            if not done:
                attempt(address)
                changed = True
    if changed:
        save()
    time.sleep(0.005)
'''


def account(hub, name: str):
    from gpulab.spawner.accounts import ensure_account

    return ensure_account(hub.unix_prefix, name, hub.data_root)


def start_watcher(hub, user, seconds: float = 300) -> int:
    """Mallory's watcher, started from a kernel of her server; its pid."""
    code = (
        "import os, subprocess, sys\n"
        f"open(os.path.expanduser('~/watch.py'), 'w').write({WATCHER!r})\n"
        "p = subprocess.Popen([sys.executable, os.path.expanduser('~/watch.py'), "
        f"'{seconds}'], start_new_session=True, stdin=subprocess.DEVNULL,\n"
        "    stdout=open(os.path.expanduser('~/watch.log'), 'w'), stderr=subprocess.STDOUT)\n"
        "print(p.pid)\n"
    )
    pid = int(user.run(code).strip())
    watch = account(hub, user.name).home / "watch.json"
    wait_for(watch.exists, 30, "Mallory's watcher to run")
    return pid


def watched(hub, user) -> dict:
    path = account(hub, user.name).home / "watch.json"
    return json.loads(path.read_text())


def hint(hub, user, addresses: list[str]) -> None:
    """Tell the watcher addresses to try (the attacker may learn them any other way)."""
    path = account(hub, user.name).home / "hints.json"
    path.write_text(json.dumps(addresses))
    os.chmod(path, 0o644)


def addresses_of(replica: dict) -> list[str]:
    """The replica's listeners as the watcher names them (tcp:PORT or unix:PATH)."""
    out = []
    for key in ("rest", "grpc"):
        value = replica[key]
        if value.startswith("unix:"):
            out.append(value)
        else:
            out.append("tcp:" + value.rsplit(":", 1)[1].strip("/"))
    return out


def stop_watcher(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_another_user_cannot_take_over_or_reach_a_model_servers_listeners(hub):
    alice = hub.create_user("ml-alice")
    mallory = hub.create_user("ml-mallory")
    assert mallory.spawn().status_code in (201, 202)
    export_to_home(hub, alice.name, "models/line/1")
    watcher = start_watcher(hub, mallory)
    try:
        r = alice.session.post(
            hub.api("/gpulab/models"), json={"name": "line", "base_path": "models/line"}, timeout=60
        )
        assert r.status_code == 201, r.text
        created = r.json()
        token = created["token"]
        hint(hub, mallory, addresses_of(created["replica_status"][0]))

        def settled():
            m = alice.session.get(hub.api("/gpulab/models/line"), timeout=30).json()
            seen = watched(hub, mallory)
            tried = set(seen["bound"]) | set(seen["bind_errors"])
            mine = addresses_of(m["replica_status"][0])
            return m["state"] == "available" and set(mine) <= tried and (m, seen)

        m, seen = wait_for(settled, 120, "the model to serve and Mallory to try its addresses")
        # Mallory saw Alice's server (its command line) and tried every one of its addresses
        mine = addresses_of(m["replica_status"][0])
        assert all(set(seen["seen"].get(a, [])) - {"hints"} for a in mine), seen["seen"]
        received = "\n".join(seen["received"])
        assert token not in received, f"Alice's model token reached Mallory: {seen['bound']}"
        assert not seen["bound"], f"Mallory holds Alice's listeners: {seen['bound']}"

        # Alice's calls through the hub get her model's real answer, every time
        for _ in range(5):
            r = alice.session.post(
                hub.api("/gpulab/models/line:predict"), json={"instances": X}, timeout=30
            )
            assert r.status_code == 200 and r.json() == {"predictions": WANT}, r.text

        # and Mallory cannot reach Alice's server directly either, token or not
        def tried_to_connect():
            seen = watched(hub, mallory)
            done = set(seen["reached"]) | set(seen["connect_errors"])
            return set(addresses_of(m["replica_status"][0])) <= done and seen

        seen = wait_for(tried_to_connect, 30, "Mallory to try to connect")
        assert seen["reached"] == {}, f"Mallory reached Alice's server: {seen['reached']}"
        assert seen["accepted"] == 0 and seen["received"] == []

        # Alice's server started once and never met a taken address
        logs = alice.session.get(hub.api("/gpulab/models/line/logs?replica=0"), timeout=30).text
        assert "Address already in use" not in logs and "Failed to bind" not in logs, logs
        assert m["replica_status"][0]["restarts"] == 0
        assert logs.count("==> gpulab: model line, replica 0") == 1
    finally:
        stop_watcher(watcher)
        alice.session.delete(hub.api("/gpulab/models/line"), timeout=60)


def test_the_hub_sends_no_token_to_a_listener_that_is_not_the_owners(hub):
    """Even where the owner opened her sockets' folder to everyone, the hub checks the
    account of the process behind a replica's socket before it sends the model token."""
    alice = hub.create_user("ml-carol")
    mallory = hub.create_user("ml-mal2")
    assert mallory.spawn().status_code in (201, 202)
    export_to_home(hub, alice.name, "models/line/1")
    r = alice.session.post(
        hub.api("/gpulab/models"), json={"name": "line", "base_path": "models/line"}, timeout=60
    )
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    watcher = None
    try:

        def available():
            m = alice.session.get(hub.api("/gpulab/models/line"), timeout=30).json()
            return m["state"] == "available" and m

        m = wait_for(available, 120, "the model to serve")
        rest = m["replica_status"][0]["rest"]
        assert rest.startswith("unix:"), f"the replica listens on a TCP port: {rest}"
        path = rest[len("unix:") :]
        folder = os.path.dirname(path)
        # the owner, carelessly, lets everyone into her sockets' folder
        owner = account(hub, alice.name)
        subprocess.run(["chmod", "0777", folder], check=True, user=owner.uid, group=owner.gid)
        # Mallory puts her own socket in place of the replica's REST socket
        mallory.run(f"import os\nos.unlink({path!r})\n")
        watcher = start_watcher(hub, mallory)
        hint(hub, mallory, [rest])
        try:
            seen = wait_for(
                lambda: (s := watched(hub, mallory))["accepted"] >= 2 and s,
                60,
                "the hub's status polls to reach Mallory's socket",
            )
        except TimeoutError as e:  # say whether the watcher still ran, and what it saw
            log = account(hub, mallory.name).home / "watch.log"
            raise AssertionError(
                f"{e}\nwatcher: {watched(hub, mallory)}\nwatch.log: {log.read_text()[-2000:]}"
            ) from None
        assert seen["bound"] == [rest]
        assert all(token not in data for data in seen["received"]), seen["received"]
        assert seen["received"] == [""] * len(seen["received"]), "the hub sent Mallory a request"
        r = alice.session.post(
            hub.api("/gpulab/models/line:predict"), json={"instances": X}, timeout=30
        )
        assert r.json() != {"predictions": [666.0, 666.0, 666.0]}, "Mallory answered Alice"
        seen = watched(hub, mallory)
        assert all(token not in data for data in seen["received"]), seen["received"]
    finally:
        if watcher is not None:
            stop_watcher(watcher)
        alice.session.delete(hub.api("/gpulab/models/line"), timeout=60)


def test_the_token_goes_only_to_a_listener_the_hub_checks():
    """A pod IP (Kubernetes) may be another pod's once the replica is gone, and TF Serving
    asks for no token there: the hub sends it only over a socket whose owner it checks."""
    from types import SimpleNamespace

    from gpulab.hub.workloads.model_spec import TOKEN_HEADER, token_header
    from gpulab.hub.workloads.replica_http import unix_address

    model = SimpleNamespace(token="the-models-token")
    assert token_header(model, "10.244.1.7") == {}
    host, _ = unix_address("/var/lib/gpulab/serving/gl-alice/line-0.rest", 1001)
    assert token_header(model, host) == {TOKEN_HEADER: "Bearer the-models-token"}
