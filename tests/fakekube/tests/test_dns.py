"""Cluster DNS: Service records and pod hostname records of headless Services."""

from __future__ import annotations

import os
import sys
from typing import Any

from kubernetes_asyncio.client.rest import ApiException

from fakekube import FakeKube
from fakekube.dns import HEADER
from fakekube.tests.helpers import core, eventually, is_true, pod


def _dns_pod(name: str, subdomain: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    body = pod(name, hostname=name, subdomain=subdomain, **spec)
    body["metadata"]["labels"] = labels
    return body


def _records(kube: FakeKube) -> set[str]:
    """The full names in the hosts file; blank lines are a rewrite's padding."""
    with open(kube.hosts_file) as f:
        records = f.read().split(HEADER + "\n", 1)[1]
    return {line.split("\t")[1].split()[0] for line in records.splitlines() if line}


async def test_cluster_dns_records_of_services_and_headless_pods() -> None:
    with FakeKube() as kube:  # simulated containers: Ready once started, podIP 127.0.0.1
        with open("/etc/hosts") as f:
            host_hosts = f.read()
        inode = os.stat(kube.hosts_file).st_ino
        train = {"job": "train"}
        async with core(kube) as v1:
            await v1.create_namespace({"metadata": {"name": "team-b"}})
            for ns, name, spec in (
                ("default", "trainers", {"clusterIP": "None", "selector": train}),
                (
                    "default",
                    "lenient",
                    {"clusterIP": "None", "selector": train, "publishNotReadyAddresses": True},
                ),
                ("default", "plain", {"selector": train, "ports": [{"port": 80}]}),
                ("default", "manual", {"clusterIP": "None"}),  # no selector
                ("team-b", "trainers", {"clusterIP": "None", "selector": {"job": "b"}}),
            ):
                await v1.create_namespaced_service(ns, {"metadata": {"name": name}, "spec": spec})
            unready = {
                "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
            }
            for ns, body in (
                ("default", _dns_pod("w-0", "trainers", train)),
                ("default", _dns_pod("w-1", "trainers", train)),
                ("default", _dns_pod("other", "trainers", {"job": "other"})),  # not selected
                ("default", _dns_pod("p-0", "plain", train)),  # not headless
                ("default", _dns_pod("m-0", "manual", train)),
                ("default", _dns_pod("gone", "nosvc", train)),
                ("team-b", _dns_pod("w-0", "trainers", train)),  # that one selects job=b
                ("team-b", _dns_pod("b-0", "trainers", {"job": "b"})),
            ):
                await v1.create_namespaced_pod(ns, body)
            nohost = pod("nohost", subdomain="trainers")
            nohost["metadata"]["labels"] = train
            await v1.create_namespaced_pod("default", nohost)
            # no Secret: the container waits (CreateContainerConfigError), the pod has an
            # IP but is not Ready; only publishNotReadyAddresses publishes it
            for name, subdomain in (("u-0", "trainers"), ("l-0", "lenient")):
                body = _dns_pod(name, subdomain, train)
                body["spec"]["containers"][0].update(unready)
                await v1.create_namespaced_pod("default", body)

            async def records_are(expected: set[str]) -> bool:
                return _records(kube) == expected

            full = "svc.cluster.local"
            # every Service with a cluster IP has its own name too (127.0.0.1 here)
            services = {f"kubernetes.default.{full}", f"plain.default.{full}"}
            await eventually(
                lambda: records_are(
                    services
                    | {
                        f"w-0.trainers.default.{full}",
                        f"w-1.trainers.default.{full}",
                        f"l-0.lenient.default.{full}",
                        f"b-0.trainers.team-b.{full}",
                    }
                ),
                what="the records",
            )
            with open(kube.hosts_file) as f:
                text = f.read()
            assert text.startswith(host_hosts)
            assert (
                "127.0.0.1\tw-1.trainers.default.svc.cluster.local w-1.trainers.default.svc"
                " w-1.trainers.default w-1.trainers\n" in text
            )
            assert (
                "127.0.0.1\tplain.default.svc.cluster.local plain.default.svc plain.default\n"
                in text
            )
            # a deleted (terminating) pod's record goes at once; the file is the same one
            await v1.delete_namespaced_pod("w-1", "default")
            await eventually(
                lambda: is_true(f"w-1.trainers.default.{full}" not in _records(kube)),
                what="w-1's record to go",
            )
            assert f"w-0.trainers.default.{full}" in _records(kube)
            await v1.delete_namespaced_service("trainers", "default")
            await eventually(
                lambda: records_are(
                    services | {f"l-0.lenient.default.{full}", f"b-0.trainers.team-b.{full}"}
                ),
                what="the Service's records to go",
            )
            assert os.stat(kube.hosts_file).st_ino == inode


async def test_pods_resolve_each_other_by_hostname_and_subdomain() -> None:
    # the suite runs as root (conftest), so pods get the cluster's /etc/hosts
    with FakeKube(run_containers=True) as kube:
        assert kube.pod_dns, "FakeKube cannot make mount namespaces (util-linux unshare/setpriv)"
        train = {"job": "train"}
        fqdn = "trainers.default.svc.cluster.local"
        w0 = _dns_pod("w-0", "trainers", train)
        w0["spec"]["containers"][0]["command"] = [
            "sh",
            "-c",
            f"until getent hosts w-0.{fqdn} w-1.{fqdn} >/dev/null; do sleep 0.05; done\n"
            "for name in w-1.trainers.default.svc.cluster.local w-1.trainers.default.svc"
            " w-1.trainers.default w-1.trainers; do\n"
            '  echo "$name $(getent hosts $name | cut -d" " -f1)"\n'
            "done\n"
            'getent hosts solo.nosvc.default.svc.cluster.local; echo "solo: $?"\n'
            f'getent hosts solo.{fqdn}; echo "solo.trainers: $?"\n'
            "exec sleep 30",
        ]
        w1 = _dns_pod("w-1", "trainers", train, securityContext={"runAsUser": 65534})
        w1["spec"]["containers"][0]["command"] = [
            sys.executable,
            "-c",
            "import os, socket, time\n"
            "while True:\n"
            "    try:\n"
            f"        ip = socket.gethostbyname('w-0.{fqdn}')\n"
            "        break\n"
            "    except OSError:\n"
            "        time.sleep(0.05)\n"
            "print(os.getuid(), ip, flush=True)\n"
            "time.sleep(30)",
        ]
        async with core(kube) as v1:
            await v1.create_namespaced_service(
                "default",
                {
                    "metadata": {"name": "trainers"},
                    "spec": {"clusterIP": "None", "selector": train},
                },
            )
            # selected by the Service, but its subdomain names none: no record
            await v1.create_namespaced_pod("default", _dns_pod("solo", "nosvc", train))
            await v1.create_namespaced_pod("default", w0)
            await v1.create_namespaced_pod("default", w1)

            async def log_of(name: str, lines: int) -> str:
                try:
                    text = await v1.read_namespaced_pod_log(name, "default")
                except ApiException:  # not started yet
                    return ""
                return text if text.count("\n") >= lines else ""

            assert await eventually(lambda: log_of("w-0", 6), what="w-0's lookups") == (
                "w-1.trainers.default.svc.cluster.local 127.0.0.1\n"
                "w-1.trainers.default.svc 127.0.0.1\n"
                "w-1.trainers.default 127.0.0.1\n"
                "w-1.trainers 127.0.0.1\n"
                "solo: 2\n"
                "solo.trainers: 2\n"
            )
            # as runAsUser 65534 (the mount is made as root, then privileges drop)
            assert await eventually(lambda: log_of("w-1", 1), what="w-1's lookup") == (
                "65534 127.0.0.1\n"
            )
            with open("/etc/hosts") as f:
                assert "trainers" not in f.read()  # this host's own is untouched
            await v1.delete_namespaced_pod("w-1", "default", grace_period_seconds=1)
            await eventually(
                lambda: is_true(f"w-1.{fqdn}" not in _records(kube)), what="w-1's record to go"
            )
            assert _records(kube) == {f"w-0.{fqdn}", "kubernetes.default.svc.cluster.local"}
