"""The Kubernetes manifests gpulab emits: literal expectations, and the official schemas.

Every manifest is validated with kubernetes-validate against the OpenAPI schemas of the
Kubernetes version gpulab supports (strict: unknown fields are errors too), including
the whole pod KubeSpawner builds for a gpulab server.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.config import kube_config
from kubespawner.clients import load_config

from gpulab.hub.app import Context
from gpulab.hub.inventory import Gpu, slots_of_nodes
from gpulab.hub.ledger import GpuLedger, NoGpuFree
from gpulab.hub.settings import Profile, Settings, SettingsError, load_settings
from gpulab.spawner import model_objects, objects, workload_objects
from gpulab.spawner.kube_backend import KubernetesBackend
from gpulab.spawner.kube_grants import PodGrantWatcher
from gpulab.spawner.kubernetes import GpuKubeSpawner, unschedulable_reason
from kubeschema import valid


def test_home_claim_is_a_literal_rbd_claim():
    pvc = objects.home_pvc(
        "home-ada", "gpulab", 10 * 2**30, "ceph-rbd", {"app": "jupyterhub"}, {"a": "b"}
    )
    assert valid(pvc) == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "home-ada",
            "namespace": "gpulab",
            "labels": {"app": "jupyterhub", "gpulab.io/component": "home"},
            "annotations": {"a": "b"},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "ceph-rbd",
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": "10Gi"}},
        },
    }
    assert objects.pvc_resize_patch(3 * 10**9) == {
        "spec": {"resources": {"requests": {"storage": "3000000000"}}}
    }


def test_s3_secret_holds_the_variables_base64():
    secret = objects.env_secret(
        "gpulab-s3-ada",
        "gpulab",
        {"AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_ACCESS_KEY_ID": "AK"},
        {},
        objects.owner_annotations("ada@lab", ""),
    )
    assert valid(secret) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "gpulab-s3-ada",
            "namespace": "gpulab",
            "labels": {"gpulab.io/component": "s3-credentials"},
            "annotations": {"gpulab.io/user": "ada@lab", "gpulab.io/server": ""},
        },
        "type": "Opaque",
        "data": {"AWS_ACCESS_KEY_ID": "QUs=", "AWS_SECRET_ACCESS_KEY": "czNjcjN0"},
    }


def test_scheduling_of_a_profile():
    profile = Profile(
        slug="a100",
        gpus=1,
        gpu_type="NVIDIA-A100-SXM4-80GB",
        node_selector={"pool": "gpu"},
        tolerations=[
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "dedicated", "value": "ml", "effect": "NoExecute", "tolerationSeconds": 60},
        ],
    )
    assert objects.node_selector(profile, "nvidia.com/gpu.product", "node-3") == {
        "pool": "gpu",
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
        "kubernetes.io/hostname": "node-3",
    }
    assert objects.tolerations(profile.tolerations) == [
        {"operator": "Exists", "key": "nvidia.com/gpu", "effect": "NoSchedule"},
        {
            "operator": "Equal",
            "key": "dedicated",
            "value": "ml",
            "effect": "NoExecute",
            "tolerationSeconds": 60,
        },
    ]
    assert objects.gpu_limits("nvidia.com/mig-1g.10gb", 2) == {"nvidia.com/mig-1g.10gb": "2"}
    assert objects.gpu_limits("nvidia.com/gpu", 0) == {}


def test_bad_tolerations_are_refused_by_name(tmp_path):
    config = tmp_path / "gpulab.yaml"
    config.write_text(
        "profiles:\n- slug: g\n  gpus: 1\n  tolerations:\n  - {key: x, operator: Maybe}\n"
    )
    with pytest.raises(SettingsError, match=r"profiles.g.tolerations\[0\].operator"):
        load_settings(config, environ={})
    config.write_text("kubernetes:\n  gpu_tolerations:\n  - {key: x, effect: Sometimes}\n")
    with pytest.raises(SettingsError, match=r"kubernetes.gpu_tolerations\[0\].effect"):
        load_settings(config, environ={})
    config.write_text("backend: kubernetes\n")
    with pytest.raises(SettingsError, match="kubernetes.image"):
        load_settings(config, environ={})


def test_cluster_inventory_is_one_slot_per_allocatable_gpu():
    nodes = [
        {
            "metadata": {"name": "b", "labels": {"nvidia.com/gpu.product": "H100"}},
            "status": {"allocatable": {"nvidia.com/gpu": "2", "cpu": "64"}},
        },
        {"metadata": {"name": "a"}, "status": {"allocatable": {"nvidia.com/gpu": "1"}}},
        {"metadata": {"name": "cpu-only"}, "status": {"allocatable": {"cpu": "8"}}},
        {
            "metadata": {"name": "cordoned"},
            "spec": {"unschedulable": True},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}},
        },
    ]
    assert slots_of_nodes(nodes, "nvidia.com/gpu", "nvidia.com/gpu.product") == [
        Gpu(id="a/0", index=0, node="a"),
        Gpu(id="b/0", index=1, model="H100", node="b"),
        Gpu(id="b/1", index=2, model="H100", node="b"),
    ]


def test_ledger_keeps_a_servers_gpus_on_one_node():
    inventory = [
        Gpu(id=f"{n}/{i}", index=0, node=n) for n, k in (("a", 2), ("b", 4)) for i in range(k)
    ]
    ledger = GpuLedger("sqlite://", inventory)
    # best fit: one GPU comes from the node with fewest free, keeping b whole
    assert [g.id for g in ledger.reserve("u1", "", 1)] == ["a/0"]
    assert {g.node for g in ledger.reserve("u2", "", 3)} == {"b"}
    # 2 free (a/1, b/3) but on different nodes: a 2-GPU server does not fit
    with pytest.raises(NoGpuFree, match="2 of 6 free, at most 1 on one node"):
        ledger.reserve("u3", "", 2)


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:9"}}]
users: [{name: u, user: {}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


def kube_spawner(monkeypatch, tmp_path, settings: Settings, inventory: list[Gpu]):
    """A GpuKubeSpawner outside a hub (KubeSpawner's own mock user and hub); it reads a
    kubeconfig when made but contacts no API server here."""
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    load_config.cache_clear()
    ledger = GpuLedger("sqlite://", inventory, settings.gpus)
    ctx = Context(settings, KubernetesBackend(settings), inventory, ledger, None)
    # the hub's services, where a hub's users find them (hub/app.py)
    user = SimpleNamespace(
        name="ada", id=1, url="/user/ada/", groups=[], admin=False, settings={"gpulab": ctx}
    )
    return GpuKubeSpawner(_mock=True, user=user)


async def pod_of(spawner: GpuKubeSpawner) -> dict:
    pod = await spawner.get_pod_manifest()
    return ApiClient().sanitize_for_serialization(pod) | {"apiVersion": "v1", "kind": "Pod"}


async def test_pod_manifests_are_valid_and_a_cpu_spawn_keeps_no_gpu(monkeypatch, tmp_path):
    settings = Settings(backend="kubernetes")
    settings.kubernetes.image = "registry.example/gpulab/notebook:1"
    settings.profiles.append(
        Profile(
            slug="h100", gpus=1, gpu_type="H100", tolerations=[{"key": "gpu", "operator": "Exists"}]
        )
    )
    inventory = [Gpu(id="n1/0", index=0, node="n1"), Gpu(id="n1/1", index=1, node="n1")]
    spawner = kube_spawner(monkeypatch, tmp_path, settings, inventory)

    spawner.user_options = {"profile": "h100"}
    spawner.reserve_gpus()
    spawner._configure_pod(inventory[:1], {"AWS_ACCESS_KEY_ID": "AK"})
    gpu_pod = valid(await pod_of(spawner))
    (container,) = gpu_pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert gpu_pod["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.product": "H100",
        "kubernetes.io/hostname": "n1",
    }
    assert gpu_pod["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert container["envFrom"] == [{"secretRef": {"name": "gpulab-s3-ada"}}]
    assert gpu_pod["metadata"]["annotations"]["gpulab.io/gpus"] == "n1/0"
    assert {"name": "home", "mountPath": "/home/jovyan"} in container["volumeMounts"]
    assert {"name": "home", "persistentVolumeClaim": {"claimName": "home-ada"}} in gpu_pod["spec"][
        "volumes"
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GPULAB_GPUS"] == "n1/0" and "CUDA_VISIBLE_DEVICES" not in env
    assert env["HOME"] == "/home/jovyan"

    # the same spawner object, next spawn on the CPU profile: no GPU, no GPU node
    spawner.release_gpus("stopped")
    spawner.user_options = {"profile": "cpu"}
    spawner.reserve_gpus()
    spawner._configure_pod([], {})
    cpu_pod = valid(await pod_of(spawner))
    (container,) = cpu_pod["spec"]["containers"]
    limits = (container.get("resources") or {}).get("limits") or {}
    requests = (container.get("resources") or {}).get("requests") or {}
    assert "nvidia.com/gpu" not in limits and "nvidia.com/gpu" not in requests
    assert not cpu_pod["spec"].get("nodeSelector") and not cpu_pod["spec"].get("tolerations")
    assert "envFrom" not in container
    assert cpu_pod["metadata"]["annotations"]["gpulab.io/gpus"] == ""


def test_unschedulable_reason_is_the_schedulers():
    pod = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
                }
            ],
        }
    }
    assert unschedulable_reason(pod) == "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    pod["status"]["phase"] = "Running"
    assert unschedulable_reason(pod) is None
    assert unschedulable_reason(None) is None


def test_pod_watcher_frees_grants_of_pods_gone_and_only_theirs():
    inventory = [Gpu(id=f"n/{i}", index=i, node="n") for i in range(3)]
    ledger = GpuLedger("sqlite://", inventory)
    starting: set[tuple[str, str]] = set()
    watcher = PodGrantWatcher(ledger, "gpulab", lambda u, s: (u, s) in starting, "")

    def pod(user: str, gpus: str, phase: str = "Running") -> dict:
        annotations = {**objects.owner_annotations(user, ""), objects.ANNOTATION_GPUS: gpus}
        return {"metadata": {"annotations": annotations}, "status": {"phase": phase}}

    ledger.reserve("ada", "", 1)
    ledger.reserve("bob", "", 1)
    ledger.reserve("cy", "", 1)
    starting.add(("cy", ""))  # spawning: no pod yet, its grant stays
    assert watcher.resync([pod("ada", "n/0")]) == ["n/1"]
    assert [g.user for g in ledger.grants()] == ["ada", "cy"]

    # a late event about an older pod of ada's (other GPUs) frees nothing
    assert watcher.on_event("DELETED", pod("ada", "n/2")) == []
    # evicted: phase Failed frees the GPU; deleting it afterwards is a no-op
    evicted = pod("ada", "n/0", "Failed")
    evicted["status"]["reason"] = "Evicted"
    assert watcher.on_event("MODIFIED", evicted) == ["n/0"]
    assert ledger.events(limit=1)[0].reason == "its pod Failed (Evicted)"
    assert watcher.on_event("DELETED", evicted) == []
    assert watcher.on_event("MODIFIED", pod("cy", "n/2")) == []  # running: holds its GPU


def test_model_serving_objects_are_valid_and_wire_tf_serving_together():
    from gpulab.hub.workloads.model_spec import ModelSpec, monitoring_config, serving_config
    from gpulab.serving.config import parse_text, to_text

    spec = ModelSpec("line", "models/line", labels={"stable": 1}, gpus=1)
    text = to_text([serving_config(spec, "/home/jovyan")])
    assert parse_text(text)[0].base_path == "/home/jovyan/models/line"
    owner = objects.owner_annotations("ada@lab", "")
    monitoring = monitoring_config()
    config = valid(
        model_objects.model_config_map(
            "model-ada-line", "gpulab", text, {}, owner, monitoring_text=monitoring
        )
    )
    assert config["data"] == {"models.config": text, "monitoring.config": monitoring}

    pod_labels = {"gpulab.io/model-id": "7", "gpulab.io/replica": "0"}
    service = valid(
        model_objects.model_service(
            "model-ada-line", "gpulab", {"gpulab.io/model-id": "7"}, {}, owner
        )
    )
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("grpc", 8500, "grpc"),
        ("http", 8501, "http"),
    ]
    volumes, mounts = model_objects.model_home_volume("home-ada", "/home/jovyan")
    deployment = valid(
        model_objects.model_deployment(
            "model-ada-line-0",
            "gpulab",
            image="tensorflow/serving:2.21.0-gpu",
            pull_policy="IfNotPresent",
            model_name="line",
            config_map="model-ada-line",
            config_hash="abc123",
            labels={},
            annotations=owner,
            pod_labels=pod_labels,
            gpus=1,
            node_selector={"kubernetes.io/hostname": "node-2"},
            volumes=volumes,
            mounts=mounts,
        )
    )
    spec_ = deployment["spec"]
    assert spec_["replicas"] == 1 and spec_["selector"] == {"matchLabels": pod_labels}
    assert spec_["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    template = spec_["template"]
    assert template["metadata"]["annotations"]["gpulab.io/model-config-hash"] == "abc123"
    # what a Prometheus set up for TF Serving's pods scrapes: the REST port's metrics
    assert {k: v for k, v in template["metadata"]["annotations"].items() if "prometheus" in k} == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8501",
        "prometheus.io/path": "/monitoring/prometheus/metrics",
    }
    assert template["metadata"]["labels"]["gpulab.io/model-id"] == "7"
    (container,) = template["spec"]["containers"]
    assert container["image"] == "tensorflow/serving:2.21.0-gpu"
    assert container["command"][:2] == ["/bin/sh", "-c"]
    assert "--monitoring_config_file=" in container["command"][2]
    assert "batching" not in container["command"][2]
    assert container["args"][:2] == ["--port=8500", "--rest_api_port=8501"]
    assert "--enable_batching" not in container["args"]
    assert [(e["name"], e["valueFrom"]) for e in container["env"]] == [
        ("GPULAB_MODEL_CONFIG", {"configMapKeyRef": {"name": "model-ada-line", "key": "models.config"}}),
        ("GPULAB_MONITORING_CONFIG", {"configMapKeyRef": {"name": "model-ada-line", "key": "monitoring.config"}}),
    ]  # fmt: skip
    assert container["readinessProbe"]["httpGet"] == {"path": "/v1/models/line", "port": "http"}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "http"}
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert container["volumeMounts"] == [
        {"name": "home", "mountPath": "/home/jovyan", "readOnly": True}
    ]
    assert template["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "node-2"}
    cpu = model_objects.model_deployment(
        "m", "gpulab", image="tensorflow/serving:2.21.0", pull_policy="Always", model_name="m",
        config_map="m", config_hash="h", labels={}, annotations={}, pod_labels={"a": "b"},
    )  # fmt: skip
    assert valid(cpu)["spec"]["template"]["spec"]["containers"][0]["resources"] == {}


def test_a_model_with_batching_gets_its_parameters_file_and_tf_servings_flags(tmp_path):
    """The ConfigMap holds the batching parameters beside the model and monitoring configs;
    the container's shell line writes each where the flag naming it points, and starts
    tensorflow_model_server with --enable_batching (run here with a stand-in for TF
    Serving's binary that shows what it got)."""
    import subprocess

    from gpulab.hub.workloads.model_spec import (
        ModelSpec,
        batching_config,
        monitoring_config,
        serving_config,
    )
    from gpulab.serving.batching import BatchingParameters
    from gpulab.serving.config import to_text
    from gpulab.serving.monitoring import read_config

    spec = ModelSpec("line", "models/line", batching={"max_batch_size": 8, "num_batch_threads": 2})
    text = to_text([serving_config(spec, "/home/jovyan")])
    config = valid(
        model_objects.model_config_map(
            "gpulab-model-4",
            "gpulab",
            text,
            {},
            {},
            monitoring_text=monitoring_config(),
            batching_text=batching_config(spec),
        )
    )
    assert sorted(config["data"]) == ["batching.config", "models.config", "monitoring.config"]
    params = BatchingParameters.from_text(config["data"]["batching.config"])
    assert (params.max_batch_size, params.num_batch_threads) == (8, 2)
    deployment = valid(
        model_objects.model_deployment(
            "gpulab-model-4-0",
            "gpulab",
            image="tensorflow/serving:2.21.0",
            pull_policy="IfNotPresent",
            model_name="line",
            config_map="gpulab-model-4",
            config_hash="h",
            labels={},
            annotations={},
            pod_labels={"gpulab.io/model-id": "4"},
            rest_port=9123,
            batching=True,
        )
    )
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9123"
    (container,) = template["spec"]["containers"]
    assert "--enable_batching" in container["args"]
    assert [e["valueFrom"]["configMapKeyRef"]["key"] for e in container["env"]] == [
        "models.config", "monitoring.config", "batching.config",
    ]  # fmt: skip

    # the container's command, as the image runs it
    shim = tmp_path / "bin" / "tensorflow_model_server"
    shim.parent.mkdir()
    shim.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    shim.chmod(0o755)
    env = {
        "PATH": f"{shim.parent}:/usr/bin:/bin",
        "HOSTNAME": f"gpulab-model-4-0-{tmp_path.name}",
        **{e["name"]: config["data"][e["valueFrom"]["configMapKeyRef"]["key"]]
           for e in container["env"]},
    }  # fmt: skip
    argv = [*container["command"], *container["args"]]
    ran = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=True)
    flags = dict(a.split("=", 1) if "=" in a else (a, "") for a in ran.stdout.split())
    assert "--enable_batching" in flags and flags["--rest_api_port"] == "9123"
    files = {
        "--model_config_file": "models.config",
        "--monitoring_config_file": "monitoring.config",
        "--batching_parameters_file": "batching.config",
    }
    try:
        for flag, key in files.items():
            assert Path(flags[flag]).read_text() == config["data"][key], flag
        prometheus = read_config(Path(flags["--monitoring_config_file"]).read_text())
        assert prometheus.enable and prometheus.path == "/monitoring/prometheus/metrics"
    finally:
        for flag in files:
            if flag in flags:
                Path(flags[flag]).unlink(missing_ok=True)


def test_a_model_from_s3_gets_a_sync_sidecar_beside_tf_serving():
    volumes, mounts = model_objects.model_sync_volume("/models")
    sync = model_objects.model_sync_container(
        "registry.example/gpulab/notebook:1", "IfNotPresent", "s3://gpulab-ada/models/line",
        "/models", "line", 1.0, "gpulab-s3-ada",
    )  # fmt: skip
    deployment = valid(
        model_objects.model_deployment(
            "gpulab-model-3-0",
            "gpulab",
            image="tensorflow/serving:2.21.0",
            pull_policy="IfNotPresent",
            model_name="line",
            config_map="gpulab-model-3",
            config_hash="h",
            labels={},
            annotations={},
            pod_labels={"gpulab.io/model-id": "3"},
            volumes=volumes,
            mounts=mounts,
            sidecars=[sync],
        )  # fmt: skip
    )
    serving, sidecar = deployment["spec"]["template"]["spec"]["containers"]
    assert sidecar["command"] == [
        "python", "-m", "gpulab.serving.sync", "s3://gpulab-ada/models/line", "/models/line",
        "--interval", "1",
    ]  # fmt: skip
    assert sidecar["volumeMounts"] == [{"name": "models", "mountPath": "/models"}]
    assert serving["volumeMounts"] == [{"name": "models", "mountPath": "/models", "readOnly": True}]
    assert sidecar["envFrom"] == [{"secretRef": {"name": "gpulab-s3-ada"}}]


def workload_pod(**changes) -> dict:
    kwargs = dict(
        group="job-5", process="worker-1", subdomain="gpulab-job-5",
        image="registry.example/notebook:1", pull_policy="IfNotPresent",
        argv=["python", "train.py", "--lr=$(LR)"], log=".gpulab/jobs/5-mnist/worker-1.log",
        header="==> gpulab: worker-1", workdir="mnist", outputs=(".gpulab/jobs/5-mnist/m.json",),
        env={"RANK": "1", "MASTER_ADDR": "worker-0.gpulab-job-5.gpulab.svc.cluster.local"},
        env_secret="gpulab-job-5", home_claim="home-ada", home_mount="/home/jovyan",
        uid=1000, gid=100, gpus=2, node="node-2", ports=(23456,), grace_seconds=5,
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        labels={}, annotations={"gpulab.io/user": "ada@lab"},
        owner=workload_objects.owner_reference("v1", "Service", "gpulab-job-5", "uid-1"),
    )  # fmt: skip
    return workload_objects.workload_pod(
        "gpulab-job-5-worker-1-", "gpulab", **{**kwargs, **changes}
    )


def test_a_job_is_a_headless_service_and_a_pod_per_replica():
    service = valid(workload_objects.workload_service("gpulab-job-5", "gpulab", "job-5", {}, {}))
    assert service["spec"] == {
        "clusterIP": "None",
        "selector": {"gpulab.io/group": "job-5"},
        "publishNotReadyAddresses": True,
    }
    pod = valid(workload_pod())
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["generateName"] == "gpulab-job-5-worker-1-" and "name" not in meta
    assert meta["labels"] == {
        "gpulab.io/component": "workload",
        "gpulab.io/group": "job-5",
        "gpulab.io/process": "worker-1",
    }
    assert meta["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Service", "name": "gpulab-job-5", "uid": "uid-1"}
    ]
    assert (spec["hostname"], spec["subdomain"]) == ("worker-1", "gpulab-job-5")
    assert spec["restartPolicy"] == "Never" and spec["terminationGracePeriodSeconds"] == 5
    assert spec["securityContext"] == {"runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100}
    assert spec["nodeSelector"] == {"kubernetes.io/hostname": "node-2"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    (container,) = spec["containers"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    assert container["ports"] == [{"containerPort": 23456, "protocol": "TCP"}]
    assert container["envFrom"] == [{"secretRef": {"name": "gpulab-job-5"}}]
    # nothing the user wrote is expanded by the kubelet: $ is escaped
    assert container["args"][-3:] == ["python", "train.py", "--lr=$$(LR)"]
    assert container["args"][:4] == [
        ".gpulab/jobs/5-mnist/worker-1.log", "==> gpulab: worker-1", "mnist",
        ".gpulab/jobs/5-mnist/m.json",
    ]  # fmt: skip
    assert {"name": "RANK", "value": "1"} in container["env"]
    cpu = valid(workload_pod(gpus=0, node="", ports=(), env_secret="", uid=None, gid=None,
                             owner=None, tolerations=None))  # fmt: skip
    assert cpu["spec"]["containers"][0]["resources"] == {}
    assert not {"nodeSelector", "securityContext", "tolerations"} & set(cpu["spec"])
    assert "envFrom" not in cpu["spec"]["containers"][0]
    secret = valid(objects.env_secret("gpulab-job-5", "gpulab", {"A": "1"}, {}, {},
                                      component="workload-env", owner=meta["ownerReferences"][0]))  # fmt: skip
    assert secret["metadata"]["ownerReferences"][0]["name"] == "gpulab-job-5"
    assert secret["metadata"]["labels"] == {"gpulab.io/component": "workload-env"}


def run_workload_shell(tmp_path, *command: str, outputs: str = "", workdir: str = ""):
    """The pod's shell, run here as the kubelet would (``$$`` unescaped): (exit code,
    container log, log on the home)."""
    import subprocess

    pod = workload_pod(argv=list(command), outputs=tuple(outputs.split()), workdir=workdir)
    container = pod["spec"]["containers"][0]
    argv = [a.replace("$$", "$") for a in container["command"] + container["args"]]
    out = subprocess.run(argv, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                         capture_output=True, timeout=30, cwd=tmp_path)  # fmt: skip
    log = tmp_path / ".gpulab/jobs/5-mnist/worker-1.log"
    return out.returncode, out.stdout.decode(), log.read_text() if log.exists() else None


def test_the_workload_pods_shell_logs_twice_keeps_the_exit_code_and_hands_files_back(tmp_path):
    (tmp_path / "mnist").mkdir()
    code, container_log, home_log = run_workload_shell(
        tmp_path, "sh", "-c", 'pwd; echo oops >&2; printf "{\\"loss\\": 1}" >../m.json; exit 3',
        outputs="m.json", workdir="mnist",
    )  # fmt: skip
    assert code == 3
    assert home_log == f"==> gpulab: worker-1\n{tmp_path}/mnist\noops\n"
    lines = container_log.splitlines()
    assert lines[:3] == home_log.splitlines()
    assert lines[3] == "==> gpulab: file m.json eyJsb3NzIjogMX0="  # base64 of {"loss": 1}
    # a second attempt appends; a missing command is the shell's 127
    code, _, home_log = run_workload_shell(tmp_path, "no-such-command")
    assert code == 127 and home_log.count("==> gpulab: worker-1") == 2
    code, container_log, _ = run_workload_shell(tmp_path, "true", workdir="missing")
    assert code == 2 and "gpulab: cannot enter ~/missing" in container_log


def test_the_workload_pods_shell_passes_term_on_and_reports_the_commands_code(tmp_path):
    import signal
    import subprocess
    import time

    pod = workload_pod(argv=["sh", "-c", "trap 'echo got term; exit 7' TERM; echo up; "
                                         "while :; do sleep 0.05; done"], outputs=(), workdir="")  # fmt: skip
    container = pod["spec"]["containers"][0]
    argv = [a.replace("$$", "$") for a in container["command"] + container["args"]]
    # the runtime signals only the container's first process, the shell
    proc = subprocess.Popen(argv, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            stdout=subprocess.PIPE, cwd=tmp_path)  # fmt: skip
    log = tmp_path / ".gpulab/jobs/5-mnist/worker-1.log"
    deadline = time.monotonic() + 10
    while not (log.exists() and "up" in log.read_text()):
        assert time.monotonic() < deadline, "the command did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 7
    assert "got term" in proc.stdout.read().decode()
    assert log.read_text().endswith(
        "got term\n==> gpulab: stopped by the hub (SIGTERM; exit code 7): its status at the hub "
        "says why\n"
    )


def test_the_hubs_copy_of_a_pod_log_keeps_lines_files_and_its_limit(tmp_path):
    import base64

    from gpulab.spawner.kube_runner import KubeRunner

    settings = Settings(data_root=str(tmp_path))
    settings.kubernetes.namespace = "gpulab"
    settings.jobs.log_copy_limit = "1MiB"
    runner = KubeRunner(settings)
    log = ".gpulab/jobs/1-a/worker-0.log"
    target = runner.log_copies._copy_path("ada@lab", log)
    target.parent.mkdir(parents=True)
    # whole lines are copied, a partial one waits; a handed-back file goes beside
    metrics = base64.b64encode(b'{"loss": 1}').decode()
    handed_back = b"==> gpulab: file .gpulab/jobs/1-a/m.json " + metrics.encode()
    rest = runner.log_copies._append("ada@lab", target, b"one\ntwo\n" + handed_back + b"\nthr")
    assert rest == b"thr" and target.read_bytes() == b"one\ntwo\n"
    assert runner.read_log("ada@lab", ".gpulab/jobs/1-a/m.json") == b'{"loss": 1}'
    assert runner.read_log("ada@lab", "../../etc/passwd") == b""
    # a process cannot hand back a log, or a file outside its log's folder
    for path in (".gpulab/jobs/1-a/worker-1.log", ".gpulab/jobs/2-b/m.json", "../x"):
        runner.log_copies._append("ada@lab", target, f"==> gpulab: file {path} eHg=\n".encode())
        assert runner.read_log("ada@lab", path) == b""
    # past the limit, the older half goes, with a line saying so
    line = b"x" * 99 + b"\n"
    for _ in range(30):
        runner.log_copies._append("ada@lab", target, line * 1000)
    kept = target.read_bytes()
    assert len(kept) <= 2**20 and kept.endswith(line)
    assert kept.startswith(b"==> gpulab: earlier output dropped from the hub's copy")
    assert b"one\n" not in kept
    # a line longer than a line may be is copied without waiting for its end
    assert runner.log_copies._append("ada@lab", target, b"y" * (2**20 + 1)) == b""
    assert target.read_bytes().endswith(b"y\n")


RBAC = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "rbac.yaml"


def test_the_shipped_rbac_manifests_are_valid_objects():
    docs = list(yaml.safe_load_all(RBAC.read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"]
    for doc in docs:
        valid(doc)
