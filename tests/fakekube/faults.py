"""Fault injection: make chosen requests fail or slow down, so a test can check how a
client copes (retries, back-off, a clear error in the end)::

    kube.faults.fail("create", "pods", status=500, times=2)  # the next 2 pod creations
    kube.faults.fail("list", "pods", status=429, retry_after=3)
    kube.faults.delay("*", "persistentvolumeclaims", 0.5)  # every such request, until cleared
    kube.drop_watches()  # cut the watch streams open now
    kube.faults.clear()

``verb`` is the Kubernetes verb a request maps to (get, list, watch, create, update,
patch, delete, deletecollection; "*" for any); ``resource`` the plural, with its
subresource if any ("pods", "pods/status", "pods/log"; "*" for any). A rule matches
only its own namespace if given one. Failures answer as a real apiserver does: 500 a
``Status`` with reason ``InternalError``, 409 a ``Status`` with reason ``Conflict``
("the object has been modified"), 429 the plain-text answer of the apiserver's
priority-and-fairness filter ("Too many requests, please try again later.") with a
``Retry-After`` header. Rules apply in the order they were added (every matching delay,
then the first matching failure); ``hits`` counts the requests a rule acted on.
Authentication and authorization come first (see ``rbac``), as the apiserver's filters
run before its handlers: a request refused with 401 or 403 meets no rule and spends
none.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

STATUSES = (409, 429, 500)


@dataclass
class Fault:
    verb: str
    resource: str
    namespace: str | None
    status: int | None  # None: a delay
    seconds: float = 0.0
    times: int | None = 1  # None: until cleared
    retry_after: int = 1
    hits: int = 0

    def matches(self, verb: str, resource: str, namespace: str | None) -> bool:
        return (
            (self.times is None or self.hits < self.times)
            and self.verb in ("*", verb)
            and self.resource in ("*", resource)
            and self.namespace in (None, namespace)
        )


class Faults:
    """The rules in force; shared by the test's thread and the server's loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Fault] = []

    def fail(
        self,
        verb: str,
        resource: str,
        status: int = 500,
        *,
        times: int | None = 1,
        namespace: str | None = None,
        retry_after: int = 1,
    ) -> Fault:
        """Answer the next ``times`` matching requests (None: all) with ``status``
        (500, 409 or 429; ``retry_after`` seconds for 429)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        return self._add(Fault(verb, resource, namespace, status, 0.0, times, retry_after))

    def delay(
        self,
        verb: str,
        resource: str,
        seconds: float,
        *,
        times: int | None = None,
        namespace: str | None = None,
    ) -> Fault:
        """Hold matching requests ``seconds`` before answering them."""
        return self._add(Fault(verb, resource, namespace, None, seconds, times))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._rules.append(fault)
        return fault

    def take(self, verb: str, resource: str, namespace: str | None) -> tuple[float, Fault | None]:
        """For one request: the seconds to wait first and the failure to answer with."""
        wait, failure = 0.0, None
        with self._lock:
            for rule in self._rules:
                if not rule.matches(verb, resource, namespace):
                    continue
                if rule.status is None:
                    wait += rule.seconds
                    rule.hits += 1
                elif failure is None:
                    failure = rule
                    rule.hits += 1
        return wait, failure
