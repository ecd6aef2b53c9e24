"""Cluster DNS: the records CoreDNS serves for Services, and for pod hostnames of
headless Services.

A pod with ``spec.hostname`` and ``spec.subdomain``, in a namespace that has a
headless Service (``clusterIP: None``) named like the subdomain whose
``spec.selector`` matches the pod's labels, gets the A record
``<hostname>.<subdomain>.<namespace>.svc.cluster.local`` -> its ``podIP``
(127.0.0.1 here), as the DNS specification for Kubernetes describes and the
EndpointSlice controller + CoreDNS serve it. Which pods count is the EndpointSlice
controller's rule: a pod with a ``podIP`` that is not in a terminal phase
(``Succeeded``/``Failed``) and whose endpoint is ready, that is: the pod is Ready and
not terminating (no ``deletionTimestamp``), or the Service sets
``publishNotReadyAddresses: true`` (then terminating pods stay too, as there). A
Service without a selector gets no records.

How they reach the pods: every record is written to one hosts file, ``hosts`` under
FakeKube's workdir (``FakeKube.hosts_file``): this host's own ``/etc/hosts`` followed by
one line per pod. It is rewritten in place (never replaced by a rename) and only when
its content changes, because container processes see it bind-mounted as their
``/etc/hosts`` (see ``containers``: only when FakeKube runs as root and can make mount
namespaces; otherwise processes see this host's ``/etc/hosts`` and no cluster names).

Not imitated: a real pod resolves through its resolv.conf search list
(``<ns>.svc.cluster.local svc.cluster.local cluster.local``); a hosts file has none, so
the file also lists the shorter names a pod reaches that way
(``<hostname>.<subdomain>.<ns>.svc``, ``<hostname>.<subdomain>.<ns>``,
``<hostname>.<subdomain>``), and since there is one file for all pods, the last one
resolves from every namespace here, not only from the pod's own. Also not: cluster
IPs (they do not route here, so a Service's names resolve to 127.0.0.1 instead:
``<service>.<ns>.svc.cluster.local``, ``<service>.<ns>.svc``, ``<service>.<ns>``, not
the bare ``<service>``; with no kube-proxy, a connection reaches the Service's pod only
when the pod listens on the Service's port number itself), SRV records, the names
CoreDNS also answers for the endpoints of non-headless Services and for endpoints without a hostname (``1-2-3-4.<service>...``,
from the IP), the kubelet's own entries in each pod's
``/etc/hosts`` (its own ``<hostname>.<subdomain>...`` name and ``hostAliases``), and
the few seconds of delay CoreDNS's cache adds: a record changes as soon as its pod or
Service does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .controller import Controller
from .resources import POD, SERVICE

if TYPE_CHECKING:
    from .cluster import Cluster

Obj = dict[str, Any]
CLUSTER_DOMAIN = "cluster.local"
HEADER = "# fakekube cluster DNS: pod hostnames of headless Services"


def _ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def pod_names(hostname: str, subdomain: str, namespace: str) -> list[str]:
    """The names of a pod's record, the full one first, then the shorter forms its
    resolv.conf search list would complete."""
    name = f"{hostname}.{subdomain}"
    return [
        f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}",
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}",
        name,
    ]


def service_names(name: str, namespace: str) -> list[str]:
    """A Service's names, without the bare ``<service>`` (one file serves every
    namespace here; see the module docstring)."""
    return [
        f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}",
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}",
    ]


class ClusterDns(Controller):
    name = "cluster-dns"
    watches = ("pods", "services")

    def __init__(self, cluster: Cluster, hosts_file: Path, base: Path = Path("/etc/hosts")):
        super().__init__(cluster)
        self.hosts_file = hosts_file
        try:
            self.base = base.read_text()
        except OSError:
            self.base = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        if self.base and not self.base.endswith("\n"):
            self.base += "\n"
        self._written: str | None = None
        self.write(self.render([]))  # there before any container starts

    def records(self) -> list[tuple[str, list[str]]]:
        """(IP, names) for every pod that has a record now, in a stable order."""
        out: list[tuple[str, list[str]]] = []
        for svc in self.store.iter(SERVICE):
            spec = svc.get("spec") or {}
            selector = spec.get("selector") or {}
            if spec.get("type") != "ExternalName" and spec.get("clusterIP") not in (None, "None"):
                ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
                # a Service's name: 127.0.0.1, where its pods listen (no kube-proxy here)
                out.append(("127.0.0.1", service_names(name, ns)))
                continue
            if spec.get("clusterIP") != "None" or not selector:
                continue
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
            for pod in self.store.iter(POD, ns):
                pod_spec, status = pod["spec"], pod.get("status") or {}
                labels = pod["metadata"].get("labels") or {}
                hostname = pod_spec.get("hostname")
                if (
                    not hostname
                    or pod_spec.get("subdomain") != name
                    or any(labels.get(k) != v for k, v in selector.items())
                    or not status.get("podIP")
                    or status.get("phase") in ("Succeeded", "Failed")
                ):
                    continue
                terminating = bool(pod["metadata"].get("deletionTimestamp"))
                if publish_not_ready or (_ready(pod) and not terminating):
                    entry = (status["podIP"], pod_names(hostname, name, ns))
                    if entry not in out:
                        out.append(entry)
        return out

    def render(self, records: list[tuple[str, list[str]]]) -> str:
        lines = [f"{ip}\t{' '.join(names)}\n" for ip, names in records]
        return self.base + HEADER + "\n" + "".join(lines)

    def write(self, text: str) -> None:
        """Rewrite the hosts file in place (it is bind-mounted: a rename would leave
        the mounts on the old file), only when its content changes. One write covers
        the old length, padded with newlines (blank lines, which resolvers skip), and
        the truncation follows: a reader in between sees no stale tail of old lines."""
        if text == self._written:
            return
        data = text.encode()
        fd = os.open(self.hosts_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            old = os.fstat(fd).st_size
            os.pwrite(fd, data + b"\n" * max(0, old - len(data)), 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        self._written = text

    def sync(self) -> None:
        self.write(self.render(self.records()))
