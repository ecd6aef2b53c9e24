"""The proxy apart from the hub: a hub restart drops no route, a hung proxy is replaced.

The real configurable-http-proxy in front of a real hub and a user's server: users keep
reaching their server through the proxy while the hub is killed or stopped and started
again, and a proxy that stops answering (SIGSTOP) is replaced by the hub, routes and all.
"""

import os
import signal
import threading
import time

import requests

from hubfixture import wait_for


def proxy_pid(hub) -> int:
    return int((hub.data_root / "jupyterhub-proxy.pid").read_text())


def reaches_server(user, session: requests.Session | None = None) -> bool:
    """The user's own server answers its status API through the proxy (not the hub's
    redirect for a server that has no route)."""
    try:
        r = (session or user.session).get(
            user.server_url + "/api/status", timeout=2, allow_redirects=False
        )
    except requests.Timeout:
        return False
    return r.status_code == 200 and "started" in r.json()


class Poller(threading.Thread):
    """Requests the user's server through the proxy every 20 ms, recording each answer."""

    def __init__(self, user):
        super().__init__(daemon=True)
        self.user = user
        self.results: list[tuple[float, str | None]] = []  # (when, what went wrong)
        self.halt = threading.Event()

    def run(self) -> None:
        session = requests.Session()  # its own: the test's thread uses the user's
        session.headers["Authorization"] = f"token {self.user.token}"
        while not self.halt.is_set():
            when = time.monotonic()
            try:
                ok = reaches_server(self.user, session)
                failure = None if ok else "not the server's status"
            except (requests.RequestException, ValueError) as e:
                failure = repr(e)
            self.results.append((when, failure))
            self.halt.wait(0.02)

    def between(self, start: float, end: float) -> list[tuple[float, str | None]]:
        return [r for r in self.results if start <= r[0] <= end]

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def restart_under_load(hub, user, stop_hub) -> list[tuple[float, str | None]]:
    """Stop the hub with ``stop_hub`` and start it again while the user's server is
    requested through the proxy; every request made meanwhile."""
    poller = Poller(user)
    poller.start()
    try:
        wait_for(lambda: len(poller.results) >= 5, 10, "the first requests")
        start = time.monotonic()
        stop_hub()
        hub.start()
        end = time.monotonic()
        wait_for(lambda: poller.results[-1][0] > end, 10, "a request after the restart")
    finally:
        poller.stop()
    return poller.between(start, time.monotonic())


def test_a_hub_restart_drops_no_request_to_a_users_server(hub):
    alice = hub.create_user("alice")
    assert alice.spawn(profile="cpu").status_code in (201, 202)
    assert reaches_server(alice)
    pid = proxy_pid(hub)

    during = restart_under_load(hub, alice, hub.kill)
    failed = [r for r in during if r[1]]
    print(f"\nhub killed and started again: {len(during)} requests, {len(failed)} failed")
    assert len(during) > 20  # the restart takes seconds: requests went on all along
    assert failed == [], failed[:5]
    assert proxy_pid(hub) == pid
    assert f"Adopting the running proxy (pid {pid})" in hub.log_path.read_text()

    # a graceful stop (SIGTERM) leaves the proxy running too, and says so
    during = restart_under_load(hub, alice, hub.stop)
    failed = [r for r in during if r[1]]
    print(f"hub stopped and started again: {len(during)} requests, {len(failed)} failed")
    assert failed == [], failed[:5]
    assert proxy_pid(hub) == pid
    assert f"The proxy keeps running (pid {pid})" in hub.log_path.read_text()

    # the new hub manages the adopted proxy's routes: a new server is reached through it
    bob = hub.create_user("bob")
    assert bob.spawn(profile="cpu").status_code in (201, 202)
    # (its first answer may be slow on a busy machine; a route never added never answers)
    wait_for(lambda: reaches_server(bob), 30, "bob's new server through the adopted proxy")
    assert proxy_pid(hub) == pid


def test_a_hung_proxy_is_replaced_with_its_routes(hub):
    carol = hub.create_user("carol")
    assert carol.spawn(profile="cpu").status_code in (201, 202)
    assert reaches_server(carol)
    hung = proxy_pid(hub)

    os.kill(hung, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:

        def served_again() -> bool:
            return proxy_pid(hub) != hung and reaches_server(carol)

        wait_for(served_again, 30, "a new proxy to serve carol's server", interval=0.1)
        took = time.monotonic() - stopped_at
        print(f"\nproxy stopped (SIGSTOP): routes back through a new proxy after {took:.1f} s")
        log = hub.log_path.read_text()
        assert f"The proxy (pid {hung}) did not answer 2 health requests in a row" in log
        assert f"A new proxy (pid {proxy_pid(hub)}) serves the routes again" in log
        # the hung one was killed, not left behind to hold the ports
        wait_for(lambda: not alive(hung), 10, "the hung proxy to be gone")
        # and the hub, its API and the login page behind the new proxy, answer
        assert hub.admin.get(hub.api("/users/carol"), timeout=10).status_code == 200
    finally:
        if alive(hung):
            os.kill(hung, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
