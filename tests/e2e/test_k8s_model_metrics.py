"""A model with batching on the kubernetes backend, deployed through a real hub on the
fake cluster: the ConfigMap the hub writes holds TF Serving's batching parameters and
monitoring config beside the model config, the replicas' containers start
``tensorflow_model_server`` with the flags that read them, their pods carry the
``prometheus.io`` annotations, and the model's metrics come through the hub from every
replica's pod."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gpulab.serving.batching import BatchingParameters
from gpulab.serving.monitoring import read_config
from gpulab.spawner import objects
from hubfixture import export_line, predict_together, wait_for
from k8sfixture import NAMESPACE, kube_get, kube_post

pytestmark = pytest.mark.timeout(300)

BATCHING = {"max_batch_size": 8, "batch_timeout_micros": 500000, "num_batch_threads": 1}
GRAPH_RUNS = ":tensorflow:core:graph_runs"


@pytest.fixture
def hub(k8s):
    return k8s


def scrape(user, name: str) -> dict[str, dict[tuple, float]]:
    """The model's metrics through the hub, as Prometheus reads them with the owner's hub
    token: samples by name and labels."""
    r = requests.get(
        user.hub.api(f"/gpulab/models/{name}/metrics"),
        headers={"Authorization": f"Bearer {user.token}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            key = family.name if family.type == "counter" else sample.name
            out.setdefault(key, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_a_batching_model_runs_with_its_files_and_its_metrics_come_from_every_pod(hub, kube):
    ada = hub.create_user("kbatch")
    home = Path(hub.settings["kubernetes"]["home_mount"])
    export_line(home / "models" / "kb" / "1")
    claim = objects.home_pvc(
        "home-kbatch", NAMESPACE, 2**30, "ceph-rbd", {}, objects.owner_annotations(ada.name, "")
    )
    kube_post(kube, f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims", claim)
    r = ada.session.post(
        hub.api("/gpulab/models"),
        json={"name": "kb", "base_path": "models/kb", "replicas": 2, "batching": BATCHING},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    wait_for(
        lambda: all(
            s["state"] == "available"
            for s in ada.session.get(hub.api("/gpulab/models/kb"), timeout=30).json()[
                "replica_status"
            ]
        ),
        180,
        "both replicas to serve",
    )

    # the ConfigMap: TF Serving's own files
    data = kube_get(kube, f"/api/v1/namespaces/{NAMESPACE}/configmaps/gpulab-model-{model_id}")[
        "data"
    ]
    assert sorted(data) == ["batching.config", "models.config", "monitoring.config"]
    params = BatchingParameters.from_text(data["batching.config"])
    assert (params.max_batch_size, params.batch_timeout_micros, params.num_batch_threads) == (
        8,
        500000,
        1,
    )
    prometheus = read_config(data["monitoring.config"])
    assert prometheus.enable and prometheus.path == "/monitoring/prometheus/metrics"
    # each replica's container reads them, and its pod says where its metrics are
    for index in (0, 1):
        deployment = kube_get(
            kube,
            f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/gpulab-model-{model_id}-{index}",
        )
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert "--enable_batching" in container["args"]
        line = container["command"][2]
        assert "--batching_parameters_file=" in line and "--monitoring_config_file=" in line
        keys = [e["valueFrom"]["configMapKeyRef"]["key"] for e in container["env"]]
        assert keys == ["models.config", "monitoring.config", "batching.config"]
        rest = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
        notes = template["metadata"]["annotations"]
        assert (notes["prometheus.io/scrape"], notes["prometheus.io/port"]) == ("true", str(rest))
        assert notes["prometheus.io/path"] == "/monitoring/prometheus/metrics"

    # both replicas' metrics through the hub, each labelled with its replica
    loads = scrape(ada, "kb")[":tensorflow:cc:saved_model:load_attempt_count"]
    assert sorted(dict(k)["replica"] for k in loads) == ["0", "1"]
    before = sum(scrape(ada, "kb").get(GRAPH_RUNS, {}).values())
    answers = predict_together(hub, ada, "kb")
    assert answers == {i: {"predictions": [0.5 * i + 2.0]} for i in range(4)}
    runs = scrape(ada, "kb")[GRAPH_RUNS]
    assert {dict(k)["replica"] for k in runs} <= {"0", "1"}
    assert 1 <= sum(runs.values()) - before < 4, runs  # calls taken together on each pod

    r = ada.session.patch(hub.api("/gpulab/models/kb"), json={"batching": True}, timeout=30)
    assert r.status_code == 400 and "undeploy it and deploy again" in r.json()["message"]
    assert ada.session.delete(hub.api("/gpulab/models/kb"), timeout=90).status_code == 204
