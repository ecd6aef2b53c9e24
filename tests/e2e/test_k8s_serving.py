"""The model-serving manifests run on the fake cluster: the Deployment's container
command line, with the config files it gets from the ConfigMap (model, monitoring,
batching), starts a TF-Serving-compatible ``tensorflow_model_server`` (gpulab's model
server stands in for TF Serving's binary: it takes the same flags), the kubelet's probes
find it ready, it answers, batches calls that arrive together and serves its Prometheus
metrics where the pod's annotations say.

The fake cluster runs commands from this host's filesystem, so ``tensorflow_model_server``
is a two-line script on the image's PATH that runs ``python -m gpulab.serving``; volume
mounts are not imitated, so the "mounted home" is a folder of this host.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

import requests
from kubernetes_asyncio import client
from prometheus_client.parser import text_string_to_metric_families

from fakekube import FakeKube
from fakekube.tests.helpers import apis, eventually
from gpulab.hub.workloads.model_spec import (
    ModelSpec,
    batching_config,
    monitoring_config,
    serving_config,
)
from gpulab.serving.config import to_text
from gpulab.spawner import model_objects, objects
from hubfixture import export_line, free_port
from k8sfixture import CEPH_RBD
from kubeschema import valid


async def test_the_built_deployment_serves_the_model_on_the_fake_cluster(tmp_path):
    home = tmp_path / "home"
    export_line(home / "models" / "line" / "1")
    shim = tmp_path / "bin" / "tensorflow_model_server"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m gpulab.serving "$@"\n')
    shim.chmod(0o755)
    image_env = {k: v for k, v in os.environ.items() if k != "HOME"}
    image_env["PATH"] = f"{shim.parent}:{image_env['PATH']}"

    spec = ModelSpec(
        "line", "models/line", batching={"max_batch_size": 8, "batch_timeout_micros": 500000}
    )
    text = to_text([serving_config(spec, str(home))])
    labels = {"app": "gpulab"}
    pod_labels = {"gpulab.io/model-id": "1", "gpulab.io/replica": "0"}
    grpc_port, rest_port = free_port(), free_port()
    volumes, mounts = model_objects.model_home_volume("home-ada", str(home))
    manifests = [
        model_objects.model_config_map(
            "model-line",
            "default",
            text,
            labels,
            {},
            monitoring_text=monitoring_config(),
            batching_text=batching_config(spec),
        ),
        model_objects.model_service(
            "model-line", "default", {"gpulab.io/model-id": "1"}, labels, {}
        ),
        model_objects.model_deployment(
            "model-line-0",
            "default",
            image="tensorflow/serving:2.21.0",
            pull_policy="IfNotPresent",
            model_name="line",
            config_map="model-line",
            config_hash=hashlib.sha256(text.encode()).hexdigest()[:16],
            labels=labels,
            annotations={},
            pod_labels=pod_labels,
            grpc_port=grpc_port,
            rest_port=rest_port,
            volumes=volumes,
            mounts=mounts,
            batching=True,
        ),
    ]
    for m in manifests:
        valid(m)
    with FakeKube(nodes=[{"name": "node-1", "gpus": 0}], run_containers=True,
                  image_env=image_env, storage_classes=[CEPH_RBD]) as kube:  # fmt: skip
        async with apis(kube) as api:
            v1, apps = client.CoreV1Api(api), client.AppsV1Api(api)
            # the owner's home claim, as their server's spawn left it
            home_claim = objects.home_pvc("home-ada", "default", 2**30, "ceph-rbd", {}, {})
            await v1.create_namespaced_persistent_volume_claim("default", home_claim)
            config_map, service, deployment = manifests
            await v1.create_namespaced_config_map("default", config_map)
            await v1.create_namespaced_service("default", service)
            await apps.create_namespaced_deployment("default", deployment)

            async def available():
                d = await apps.read_namespaced_deployment("model-line-0", "default")
                return (d.status.available_replicas or 0) == 1

            selector = "gpulab.io/model-id=1,gpulab.io/replica=0"
            try:
                await eventually(available, timeout=120, what="the model's Deployment available")
            except AssertionError:
                pods = (await v1.list_namespaced_pod("default", label_selector=selector)).items
                raise AssertionError(f"not available: {[p.status for p in pods]}") from None
            (pod,) = (await v1.list_namespaced_pod("default", label_selector=selector)).items
            assert pod.status.container_statuses[0].ready
            url = f"http://{pod.status.pod_ip}:{rest_port}/v1/models/line"
            status = requests.get(url, timeout=10).json()
            assert status["model_version_status"][0]["state"] == "AVAILABLE"
            answer = requests.post(f"{url}:predict", json={"instances": [2.0]}, timeout=10)
            assert answer.json() == {"predictions": [3.0]}

            # where the pod's annotations say a Prometheus scrapes: TF Serving's metrics
            notes = pod.metadata.annotations
            assert notes["prometheus.io/scrape"] == "true"
            scraped = f"http://{pod.status.pod_ip}:{notes['prometheus.io/port']}"
            scraped += notes["prometheus.io/path"]

            def graph_runs() -> float:
                r = requests.get(scraped, timeout=10)
                assert r.status_code == 200, r.text
                for family in text_string_to_metric_families(r.text):
                    if family.name == ":tensorflow:core:graph_runs":
                        return family.samples[0].value
                return 0

            # with --enable_batching and its parameters file: four calls at once, one run
            before = graph_runs()
            calls = [
                asyncio.to_thread(
                    requests.post, f"{url}:predict", json={"instances": [x]}, timeout=30
                )
                for x in (1.0, 2.0, 3.0, 4.0)
            ]
            answers = [r.json() for r in await asyncio.gather(*calls)]
            assert answers == [{"predictions": [0.5 * x + 2.0]} for x in (1.0, 2.0, 3.0, 4.0)]
            assert 1 <= graph_runs() - before < 4
            svc = await v1.read_namespaced_service("model-line", "default")
            assert {p.name: p.port for p in svc.spec.ports} == {"grpc": 8500, "http": 8501}
            await apps.delete_namespaced_deployment("model-line-0", "default")
