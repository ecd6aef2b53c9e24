"""The scheduler and the kubelet: GPU pods queue and fit, node selectors and taints,
claims, containers as simulated or real processes, logs."""

from __future__ import annotations

import asyncio
import os
import pwd
import sys
import time
from typing import Any

import aiohttp
import pytest
import requests
from kubernetes_asyncio import watch
from kubernetes_asyncio.client.rest import ApiException

from fakekube import FakeKube
from fakekube.tests.helpers import command_pod, core, eventually, free_port, phase_is, phase_of, pod


async def test_gpu_pods_fit_queue_and_start_when_a_gpu_frees() -> None:
    nodes = [{"name": "gpu-node-1", "gpus": 1}, {"name": "gpu-node-2", "gpus": 1}]
    with FakeKube(nodes=nodes) as kube:
        async with core(kube) as v1:
            node = await v1.read_node("gpu-node-1")
            assert (
                node.status.allocatable["nvidia.com/gpu"] == "1"
                and node.status.capacity["nvidia.com/gpu"] == "1"
            )
            await v1.create_namespaced_pod("default", pod("alice", 1))
            await v1.create_namespaced_pod("default", pod("bob", 1))
            await eventually(lambda: phase_is(v1, "alice", "Running"), what="alice running")
            await eventually(lambda: phase_is(v1, "bob", "Running"), what="bob running")
            alice = await v1.read_namespaced_pod("alice", "default")
            bob = await v1.read_namespaced_pod("bob", "default")
            assert {alice.spec.node_name, bob.spec.node_name} == {"gpu-node-1", "gpu-node-2"}
            assert alice.status.pod_ip == "127.0.0.1" and alice.status.host_ip == "127.0.0.1"
            status = alice.status.container_statuses[0]
            assert status.ready and status.started and status.state.running.started_at
            assert {c.type: c.status for c in alice.status.conditions} == {
                "PodReadyToStartContainers": "True",
                "Initialized": "True",
                "Ready": "True",
                "ContainersReady": "True",
                "PodScheduled": "True",
            }
            # limits-only GPU requests are defaulted to requests, as the apiserver does
            assert alice.spec.containers[0].resources.requests == {"nvidia.com/gpu": "1"}

            await v1.create_namespaced_pod("default", pod("carol", 1))

            async def unschedulable() -> Any:
                carol = await v1.read_namespaced_pod("carol", "default")
                return next(
                    (
                        c
                        for c in carol.status.conditions or []
                        if c.type == "PodScheduled" and c.status == "False"
                    ),
                    None,
                )

            condition = await eventually(unschedulable, what="carol unschedulable")
            assert condition.reason == "Unschedulable"
            expected = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
            assert condition.message.startswith(expected)
            events = await v1.list_namespaced_event(
                "default", field_selector="involvedObject.name=carol,reason=FailedScheduling"
            )
            assert len(events.items) == 1 and events.items[0].type == "Warning"
            assert (
                events.items[0].message.startswith(expected)
                and events.items[0].involved_object.kind == "Pod"
            )

            gpu_of_alice = alice.spec.node_name
            await v1.delete_namespaced_pod("alice", "default", grace_period_seconds=1)
            await eventually(lambda: phase_is(v1, "carol", "Running"), what="carol running")
            carol = await v1.read_namespaced_pod("carol", "default")
            assert carol.spec.node_name == gpu_of_alice
            with pytest.raises(ApiException):
                await v1.read_namespaced_pod("alice", "default")


async def test_node_selectors_taints_and_extra_resources() -> None:
    nodes = [
        {
            "name": "a100",
            "gpus": 2,
            "labels": {"gpu-type": "a100"},
            "taints": [{"key": "dedicated", "value": "training", "effect": "NoSchedule"}],
        },
        {
            "name": "t4",
            "gpus": 2,
            "labels": {"gpu-type": "t4"},
            "resources": {"example.com/vgpu": 4},
        },
    ]
    with FakeKube(nodes=nodes) as kube:
        async with core(kube) as v1:
            await v1.create_namespaced_pod(
                "default", pod("wants-a100", 1, nodeSelector={"gpu-type": "a100"})
            )
            tolerating = pod(
                "tolerates",
                1,
                nodeSelector={"gpu-type": "a100"},
                tolerations=[
                    {
                        "key": "dedicated",
                        "operator": "Equal",
                        "value": "training",
                        "effect": "NoSchedule",
                    }
                ],
            )
            await v1.create_namespaced_pod("default", tolerating)
            vgpu = pod("vgpu")
            vgpu["spec"]["containers"][0]["resources"] = {"limits": {"example.com/vgpu": 5}}
            await v1.create_namespaced_pod("default", vgpu)

            async def message(name: str) -> str | None:
                p = await v1.read_namespaced_pod(name, "default")
                return next(
                    (
                        c.message
                        for c in p.status.conditions or []
                        if c.type == "PodScheduled" and c.status == "False"
                    ),
                    None,
                )

            text = await eventually(lambda: message("wants-a100"), what="wants-a100 unschedulable")
            assert text.startswith(
                "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: training}."
            )
            assert "Preemption is not helpful for scheduling" in text
            await eventually(
                lambda: phase_is(v1, "tolerates", "Running"), what="tolerating pod running"
            )
            assert (await v1.read_namespaced_pod("tolerates", "default")).spec.node_name == "a100"
            text = await eventually(lambda: message("vgpu"), what="vgpu unschedulable")
            # each node reports the first filter it fails: the taint on a100, resources on t4
            assert text.startswith(
                "0/2 nodes are available: 1 Insufficient example.com/vgpu, 1 node(s) had untolerated taint {dedicated: training}."
            )


async def test_pod_with_a_missing_claim_waits_for_it() -> None:
    rbd = {
        "metadata": {"name": "rbd"},
        "provisioner": "rbd.csi.ceph.com",
        "parameters": {"clusterID": "ceph", "pool": "rbd"},
    }
    with FakeKube(storage_classes=[rbd]) as kube:
        async with core(kube) as v1:
            body = pod(
                "needs-home",
                volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "home-alice"}}],
            )
            body["spec"]["containers"][0]["volumeMounts"] = [
                {"name": "home", "mountPath": "/home/jovyan"}
            ]
            await v1.create_namespaced_pod("default", body)

            async def failed_scheduling() -> Any:
                events = await v1.list_namespaced_event(
                    "default",
                    field_selector="involvedObject.name=needs-home,reason=FailedScheduling",
                )
                return events.items

            events = await eventually(failed_scheduling, what="FailedScheduling")
            assert events[0].message.startswith(
                '0/1 nodes are available: persistentvolumeclaim "home-alice" not found.'
            )
            assert await phase_of(v1, "needs-home") == "Pending"
            await v1.create_namespaced_persistent_volume_claim(
                "default",
                {
                    "metadata": {"name": "home-alice"},
                    "spec": {
                        "storageClassName": "rbd",
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                },
            )
            await eventually(
                lambda: phase_is(v1, "needs-home", "Running"),
                what="pod running once its claim is bound",
            )


async def test_simulated_containers_exit_and_restart_by_policy() -> None:
    with FakeKube(restart_backoff=0.2) as kube:
        async with core(kube) as v1:
            await v1.create_namespaced_pod("default", pod("once", restartPolicy="Never"))
            await v1.create_namespaced_pod("default", pod("again", restartPolicy="OnFailure"))
            await eventually(lambda: phase_is(v1, "once", "Running"), what="once running")
            await eventually(lambda: phase_is(v1, "again", "Running"), what="again running")
            kube.exit_container("default", "once", 3)
            await eventually(lambda: phase_is(v1, "once", "Failed"), what="once failed")
            terminated = (
                (await v1.read_namespaced_pod("once", "default"))
                .status.container_statuses[0]
                .state.terminated
            )
            assert terminated.exit_code == 3 and terminated.reason == "Error"

            kube.exit_container("default", "again", 1)

            async def restarted() -> bool:
                status = (
                    await v1.read_namespaced_pod("again", "default")
                ).status.container_statuses[0]
                return status.restart_count == 1 and status.state.running is not None

            await eventually(restarted, what="again restarted")
            status = (await v1.read_namespaced_pod("again", "default")).status.container_statuses[0]
            assert status.last_state.terminated.exit_code == 1
            kube.exit_container("default", "again", 0)
            await eventually(lambda: phase_is(v1, "again", "Succeeded"), what="again succeeded")


async def test_running_a_real_process_that_serves_http() -> None:
    port = free_port()
    with FakeKube(run_containers=True) as kube:
        workdir = os.path.join(kube.workdir, "home-alice")
        os.makedirs(workdir)
        with open(os.path.join(workdir, "hello.txt"), "w") as f:
            f.write("hello from the pod\n")
        async with core(kube) as v1:
            await v1.create_namespaced_secret(
                "default", {"metadata": {"name": "alice-token"}, "stringData": {"token": "s3cret"}}
            )
            body = pod("server", 1, terminationGracePeriodSeconds=5)
            body["spec"]["containers"][0].update(
                {
                    "command": ["sh", "-c"],
                    "args": [
                        'printf %s "$TOKEN" > token.txt && exec "$(PYTHON)" -m http.server "$(PORT)" --bind 127.0.0.1'
                    ],
                    "workingDir": workdir,
                    "env": [
                        {"name": "PYTHON", "value": sys.executable},
                        {"name": "PORT", "value": str(port)},
                        {
                            "name": "TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "alice-token", "key": "token"}},
                        },
                    ],
                    "ports": [{"containerPort": port, "name": "http"}],
                    "readinessProbe": {
                        "httpGet": {"path": "/hello.txt", "port": "http"},
                        "periodSeconds": 1,
                    },
                }
            )
            await v1.create_namespaced_pod("default", body)

            async def ready() -> bool:
                p = await v1.read_namespaced_pod("server", "default")
                return bool(p.status.container_statuses) and p.status.container_statuses[0].ready

            await eventually(ready, timeout=15, what="server ready")
            answer = await asyncio.to_thread(
                requests.get, f"http://127.0.0.1:{port}/hello.txt", timeout=5
            )
            assert answer.text == "hello from the pod\n"
            token = await asyncio.to_thread(
                requests.get, f"http://127.0.0.1:{port}/token.txt", timeout=5
            )
            assert token.text == "s3cret"
            logs = await v1.read_namespaced_pod_log("server", "default")
            assert "GET /hello.txt" in logs
            pid = kube.pod_pids("default", "server")["notebook"]

            final: dict[str, Any] = {}

            async def follow() -> None:
                async with watch.Watch() as w:
                    async for e in w.stream(
                        v1.list_namespaced_pod,
                        "default",
                        field_selector="metadata.name=server",
                        timeout_seconds=10,
                    ):
                        if e["type"] == "DELETED":
                            final.update(e["raw_object"])
                            return

            watcher = asyncio.create_task(follow())
            await asyncio.sleep(0.1)
            deleting = await v1.delete_namespaced_pod("server", "default")
            assert (
                deleting.metadata.deletion_timestamp is not None
                and deleting.metadata.deletion_grace_period_seconds == 5
            )
            await asyncio.wait_for(watcher, 10)
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
            terminated = final["status"]["containerStatuses"][0]["state"]["terminated"]
            assert terminated["exitCode"] == 143  # SIGTERM
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://127.0.0.1:{port}/hello.txt", timeout=2)

            failing = pod("fails", restartPolicy="Never")
            failing["spec"]["containers"][0]["command"] = [
                sys.executable,
                "-c",
                "import sys; print('bye'); sys.exit(3)",
            ]
            await v1.create_namespaced_pod("default", failing)
            await eventually(lambda: phase_is(v1, "fails", "Failed"), what="fails failed")
            status = (await v1.read_namespaced_pod("fails", "default")).status.container_statuses[0]
            assert status.state.terminated.exit_code == 3
            assert await v1.read_namespaced_pod_log("fails", "default") == "bye\n"

            # stopping FakeKube kills what still runs, even what ignores SIGTERM
            stubborn = pod("stubborn")
            stubborn["spec"]["containers"][0]["command"] = [
                "sh",
                "-c",
                'trap "" TERM; echo "$HOME $PWD"; while :; do sleep 0.1; done',
            ]
            await v1.create_namespaced_pod("default", stubborn)
            await eventually(lambda: phase_is(v1, "stubborn", "Running"), what="stubborn running")
            # HOME from the user's passwd entry, a working directory of the pod's own
            home, cwd = (
                await eventually(
                    lambda: v1.read_namespaced_pod_log("stubborn", "default"), what="log"
                )
            ).split()
            assert home == pwd.getpwuid(os.geteuid()).pw_dir and cwd.startswith(str(kube.workdir))
            # as KubeSpawner makes them: only args (the image's entrypoint runs them)
            nobody = pod("nobody", restartPolicy="Never", securityContext={"runAsUser": 65534})
            nobody["spec"]["containers"][0]["args"] = [
                "sh",
                "-c",
                'echo "$(id -u) $HOME" > out; cat out',
            ]
            await v1.create_namespaced_pod("default", nobody)
            await eventually(lambda: phase_is(v1, "nobody", "Succeeded"), what="nobody done")
            assert (
                await v1.read_namespaced_pod_log("nobody", "default")
                == f"65534 {pwd.getpwuid(65534).pw_dir}\n"
            )
            stubborn_pid = kube.pod_pids("default", "stubborn")["notebook"]
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2
    with pytest.raises(ProcessLookupError):
        os.kill(stubborn_pid, 0)


async def test_following_a_log_streams_until_the_container_exits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with FakeKube(run_containers=True) as kube:
        go = os.path.join(kube.workdir, "go")
        talker = command_pod(
            "talker",
            [
                sys.executable,
                "-c",
                "import os, time\n"
                "print('first', flush=True)\n"
                f"while not os.path.exists({go!r}): time.sleep(0.02)\n"
                "print('second', flush=True)",
            ],
        )
        async with core(kube) as v1:
            await v1.create_namespaced_pod("default", talker)
            await eventually(lambda: phase_is(v1, "talker", "Running"), what="talker running")
            resp = await v1.read_namespaced_pod_log(
                "talker", "default", follow=True, _preload_content=False
            )
            assert resp.headers["Content-Type"].startswith("text/plain")
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            # what was logged before the request, then what is written after it
            assert await asyncio.wait_for(resp.content.readline(), 10) == b"first\n"
            open(go, "w").close()
            assert await asyncio.wait_for(resp.content.read(), 10) == b"second\n"  # then EOF
            resp.release()
            await eventually(lambda: phase_is(v1, "talker", "Succeeded"), what="talker done")
            # a terminated container: its whole log, and the stream ends
            done = await v1.read_namespaced_pod_log(
                "talker", "default", follow=True, _preload_content=False
            )
            assert await asyncio.wait_for(done.read(), 5) == b"first\nsecond\n"

            # before streaming, the same errors as without follow
            missing = pod("unmounted")
            missing["spec"]["volumes"] = [{"name": "v", "secret": {"secretName": "nope"}}]
            await v1.create_namespaced_pod("default", missing)
            with pytest.raises(ApiException) as e:
                await v1.read_namespaced_pod_log("unmounted", "default", follow=True)
            assert e.value.status == 400 and "is waiting to start: ContainerCreating" in str(
                e.value.body
            )
            unset = pod("unset")
            unset["spec"]["containers"][0]["env"] = [
                {"name": "T", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}
            ]
            await v1.create_namespaced_pod("default", unset)

            async def config_error() -> bool:
                try:
                    await v1.read_namespaced_pod_log("unset", "default", follow=True)
                except ApiException as e:
                    return "CreateContainerConfigError" in str(e.body) and e.status == 400
                return False

            await eventually(config_error, what="the kubelet's waiting reason")
            with pytest.raises(ApiException) as e:
                await v1.read_namespaced_pod_log("absent", "default", follow=True)
            assert e.value.status == 404
            with pytest.raises(ApiException) as e:
                await v1.read_namespaced_pod_log("talker", "default", follow="yes")
            assert e.value.status == 400

            # a client that leaves mid-stream: the server side ends without errors
            chatty = command_pod("chatty", ["sh", "-c", "while :; do echo tick; sleep 0.05; done"])
            await v1.create_namespaced_pod("default", chatty)
            await eventually(lambda: phase_is(v1, "chatty", "Running"), what="chatty running")
            caplog.set_level("WARNING")
            async with aiohttp.ClientSession() as session:
                async with session.get(
                    f"{kube.url}/api/v1/namespaces/default/pods/chatty/log?follow=1"
                ) as left:
                    assert await asyncio.wait_for(left.content.readline(), 5) == b"tick\n"
            await asyncio.sleep(0.5)
            assert [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []
            # and a deleted pod ends the stream of a container that would run on
            still = await v1.read_namespaced_pod_log(
                "chatty", "default", follow=True, _preload_content=False
            )
            await v1.delete_namespaced_pod("chatty", "default", grace_period_seconds=1)
            assert (await asyncio.wait_for(still.read(), 10)).startswith(b"tick\n")


async def test_a_command_that_cannot_run_is_a_start_error() -> None:
    with FakeKube(run_containers=True) as kube:
        async with core(kube) as v1:
            await v1.create_namespaced_pod("default", command_pod("lost", ["no-such-tool"]))
            await v1.create_namespaced_pod(
                "default",
                command_pod("relative", ["./missing.sh"], securityContext={"runAsUser": 65534}),
            )
            for name, detail in (
                ("lost", 'exec: "no-such-tool": executable file not found in $PATH'),
                ("relative", 'exec: "./missing.sh": stat ./missing.sh: no such file or directory'),
            ):
                await eventually(lambda n=name: phase_is(v1, n, "Failed"), what=f"{name} failed")
                status = (await v1.read_namespaced_pod(name, "default")).status
                terminated = status.container_statuses[0].state.terminated
                assert (terminated.exit_code, terminated.reason) == (128, "StartError")
                assert terminated.message == (
                    "failed to create containerd task: failed to create shim task: OCI runtime "
                    "create failed: runc create failed: unable to start container process: "
                    f"{detail}: unknown"
                )
