"""A job's ``metrics_format`` is a regular expression a user gives and the hub applies to
the job's log: a hostile one must not freeze the hub for everyone else.

The attacker is a hub user who submits a job whose pattern backtracks catastrophically
(``((?:a|aa)+)=(\\d+)`` on a long run of ``a``s without ``=``) and whose log is full of
lines that trigger it, or a pattern whose counted repetitions the regex module would
unroll into millions of nodes when it compiles. The hub must keep answering another
user promptly while it reads that log, end the job with what the pattern found in time,
and say in the job's message that it gave up; the second pattern is refused at submit.
"""

from __future__ import annotations

import threading
import time

import requests

from hubfixture import wait_for

PROMPT = 0.8
"""Seconds another user's request may take while the hub reads the hostile log: less
than the pattern's budget (1 s), which a hub that ran it on its event loop would block
for."""

HOSTILE = r"((?:a|aa)+)=(\d+)"
LOG = "print('aa=5'); [print('a' * 64 + '!') for _ in range(40)]; print('aa=7')"


class Poller(threading.Thread):
    """Asks the hub for a user's jobs again and again, keeping how long each answer took."""

    def __init__(self, user):
        super().__init__(daemon=True)
        self.user = user
        self.took: list[float] = []
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.monotonic()
            try:
                r = self.user.session.get(self.user.hub.api("/gpulab/jobs"), timeout=30)
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
            except requests.RequestException as e:
                self.failures.append(str(e))
            self.took.append(time.monotonic() - started)
            time.sleep(0.05)


def test_a_catastrophic_metrics_format_neither_freezes_the_hub_nor_the_job(hub):
    victim = hub.create_user("mf-victim")
    mallory = hub.create_user("mf-mallory")
    poller = Poller(victim)
    poller.start()
    try:
        r = mallory.session.post(
            hub.api("/gpulab/jobs"),
            json={
                "name": "backtrack",
                "command": ["python", "-c", LOG],
                "metrics": ["aa"],
                "metrics_format": HOSTILE,
            },
            timeout=30,
        )
        assert r.status_code == 201, r.text

        def ended():
            job = mallory.session.get(hub.api("/gpulab/jobs/backtrack"), timeout=30).json()
            return job["state"] in ("succeeded", "failed", "cancelled") and job

        job = wait_for(ended, 120, "the job to end")
    finally:
        poller.done.set()
        poller.join(30)
    # the job ended, with what the pattern found before it ran out of time, and says so
    assert job["state"] == "succeeded", job["message"]
    assert job["metrics"] == {"aa": 5.0}
    assert job["message"] == (
        "Succeeded: every replica finished; metrics_format took longer than 1s on "
        "worker-0's log: metrics from the lines before line 3 only"
    )
    # the other user was answered promptly all along
    assert not poller.failures, poller.failures
    assert len(poller.took) > 5
    assert max(poller.took) < PROMPT, sorted(poller.took)[-5:]


def test_a_pattern_that_would_take_the_hub_long_to_compile_is_refused(hub):
    mallory = hub.create_user("mf-mallory")
    bomb = r"((?:(?:\w{100}){100}))=(\d)"  # a million nodes once unrolled
    started = time.monotonic()
    r = mallory.session.post(
        hub.api("/gpulab/jobs"),
        json={"name": "bomb", "command": ["true"], "metrics": ["x"], "metrics_format": bomb},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json() == {
        "status": 400,
        "message": "metrics_format: its counted repetitions ({m,n}) are too big: its length "
        "times each m + 1 may come to at most 20000",
    }
    assert time.monotonic() - started < PROMPT
