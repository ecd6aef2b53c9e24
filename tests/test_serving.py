"""Model serving on the local backend, through a real hub: SavedModels exported with real
TensorFlow on the user's home, served by gpulab's model servers run as the user, called
over TF Serving's REST API (through the hub and on the raw port) and its gRPC API with
the official ``tensorflow_serving.apis`` stubs, and compared with the SavedModel called
in-process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import grpc
import numpy as np
import pytest
import requests

from hubfixture import wait_for

tf = pytest.importorskip("tensorflow")  # a test dependency: installed by scripts/install --test
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

EXPORT = textwrap.dedent(
    """
    import os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    class Line(tf.Module):
        def __init__(self, a, b):
            self.a = tf.Variable(a)
            self.b = tf.Variable(b)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": self.a * x + self.b}

    path, a, b = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    line = Line(a, b)
    tf.saved_model.save(line, path, signatures={"serving_default": line.serve})
    """
)


def export(hub, user: str, path: str, a: float, b: float) -> str:
    """Export y = a*x + b as a SavedModel at ``path`` in the user's home (as the user);
    the folder appears whole (written beside it, then renamed), as a trainer should."""
    from gpulab.spawner.accounts import ensure_account

    account = ensure_account(hub.unix_prefix, user, hub.data_root)
    target = account.home / path
    staging = target.parent / f".{target.name}.partial"
    code = (
        f"import os; os.makedirs({str(target.parent)!r}, exist_ok=True)\n"
        + EXPORT
        + f"\nos.rename({str(staging)!r}, {str(target)!r})\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(staging), str(a), str(b)],
        check=True,
        user=account.uid,
        group=account.gid,
        env={"PATH": os.environ["PATH"], "HOME": str(account.home)},
        cwd=str(account.home),
        capture_output=True,
        timeout=120,
    )
    return str(target)


def deploy(user, spec: dict, expect: int = 201) -> dict:
    r = user.session.post(user.hub.api("/gpulab/models"), json=spec, timeout=60)
    assert r.status_code == expect, r.text
    return r.json()


def model(user, name: str) -> dict:
    r = user.session.get(user.hub.api(f"/gpulab/models/{name}"), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_available(user, name: str, timeout: float = 120) -> dict:
    def ready():
        m = model(user, name)
        assert m["state"] != "failed", m
        return m["state"] == "available" and m

    return wait_for(ready, timeout, f"model {name} to serve")


def predict(user, name: str, body: dict, path: str = ":predict") -> requests.Response:
    return user.session.post(user.hub.api(f"/gpulab/models/{name}{path}"), json=body, timeout=30)


def in_process(path: str, x: list[float]) -> list[float]:
    fn = tf.saved_model.load(path).signatures["serving_default"]
    return fn(x=tf.constant(x, tf.float32))["y"].numpy().tolist()


def grpc_predict(address: str, token: str | None, name: str, x, **spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x, np.float32)))
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        return stub.Predict(request, timeout=30, metadata=metadata)


X = [1.0, 2.0, 5.0]


def test_deploy_then_predict_over_rest_and_grpc_as_the_savedmodel_answers(hub):
    alice = hub.create_user("sv-alice")
    v1 = export(hub, alice.name, "models/line/1", 0.5, 2.0)
    v2 = export(hub, alice.name, "models/line/2", 0.5, 3.0)
    created = deploy(
        alice,
        {"name": "line", "base_path": "models/line", "versions": "all", "labels": {"stable": 1}},
    )
    assert created["state"] == "deploying" and created["token"]
    m = wait_available(alice, "line")
    assert sorted(v["version"] for v in m["model_versions"]) == [1, 2]
    assert m["endpoints"]["predict"] == "/hub/api/gpulab/models/line:predict"

    want1, want2 = in_process(v1, X), in_process(v2, X)
    assert want1 == [2.5, 3.0, 4.5] and want2 == [3.5, 4.0, 5.5]

    # REST through the hub: the newest version by default, or a version, or a label
    r = predict(alice, "line", {"instances": X})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": want2}
    assert predict(alice, "line", {"instances": X}, "/versions/1:predict").json() == {
        "predictions": want1
    }
    assert predict(alice, "line", {"inputs": {"x": X}}, "/labels/stable:predict").json() == {
        "outputs": want1
    }
    # TF Serving's whole REST API under the owner's serving URL
    base = hub.url + m["endpoints"]["tf_serving"]
    status = alice.session.get(f"{base}/v1/models/line", timeout=30).json()
    assert [(s["version"], s["state"]) for s in status["model_version_status"]] == [
        ("2", "AVAILABLE"),
        ("1", "AVAILABLE"),
    ]
    meta = alice.session.get(f"{base}/v1/models/line/versions/1/metadata", timeout=30).json()
    assert meta["model_spec"] == {"name": "line", "version": "1", "signature_name": ""}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert sig["method_name"] == "tensorflow/serving/predict"

    # the raw ports answer only with the model's token
    replica = m["replica_status"][0]
    token = model(alice, "line")["token"]
    raw = requests.post(f"{replica['rest']}/v1/models/line:predict", json={"instances": X})
    assert raw.status_code == 401 and "token" in raw.json()["error"]
    raw = requests.post(
        f"{replica['rest']}/v1/models/line:predict",
        json={"instances": X},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert raw.json() == {"predictions": want2}

    # gRPC with the official stubs
    answer = grpc_predict(replica["grpc"], token, "line", X)
    assert answer.model_spec.name == "line" and answer.model_spec.version.value == 2
    assert answer.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(answer.outputs["y"]).tolist() == want2
    answer = grpc_predict(replica["grpc"], token, "line", X, version_label="stable")
    assert tf.make_ndarray(answer.outputs["y"]).tolist() == want1
    with pytest.raises(grpc.RpcError) as refused:
        grpc_predict(replica["grpc"], None, "line", X)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as missing:
        grpc_predict(replica["grpc"], token, "line", X, version=7)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Servable not found for request: Specific(line, 7)" in missing.value.details()
    with grpc.insecure_channel(replica["grpc"]) as channel:
        meta_request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"]
        )
        meta_request.model_spec.name = "line"
        metadata = [("authorization", f"Bearer {token}")]
        meta = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
            meta_request, timeout=30, metadata=metadata
        )
        defs = get_model_metadata_pb2.SignatureDefMap()
        meta.metadata["signature_def"].Unpack(defs)
        assert "serving_default" in defs.signature_def
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "line"
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            status_request, timeout=30, metadata=metadata
        )
        assert [v.version for v in status.model_version_status] == [2, 1]

    r = alice.session.delete(hub.api("/gpulab/models/line"), timeout=60)
    assert r.status_code == 204
    assert alice.session.get(hub.api("/gpulab/models/line"), timeout=30).status_code == 404
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{replica['rest']}/v1/models/line", timeout=5)


def test_a_new_version_rolls_in_while_clients_call(hub):
    alice = hub.create_user("sv-roll")
    export(hub, alice.name, "models/roll/1", 0.5, 2.0)
    deploy(alice, {"name": "roll", "base_path": "models/roll"})
    wait_available(alice, "roll")

    answers: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def client():
        session = requests.Session()
        session.headers.update(alice.session.headers)
        url = hub.api("/gpulab/models/roll:predict")
        while not stop.is_set():
            try:
                r = session.post(url, json={"instances": [2.0]}, timeout=30)
            except requests.RequestException as e:
                failures.append(repr(e))
                continue
            if r.status_code != 200:
                failures.append(r.text)
            else:
                answers.append(r.json()["predictions"][0])

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for(lambda: len(answers) > 20, 30, "the client's first answers")
        export(hub, alice.name, "models/roll/3", 0.5, 10.0)
        wait_for(lambda: answers and answers[-1] == 11.0, 90, "answers from version 3")
        seen = len(answers)
        wait_for(lambda: len(answers) > seen + 20, 30, "more answers after the switch")
    finally:
        stop.set()
        thread.join(timeout=60)
    assert failures == []
    switch = answers.index(11.0)
    assert set(answers[:switch]) == {3.0} and set(answers[switch:]) == {11.0}

    def serving():
        versions = model(alice, "roll")["model_versions"]
        return [v["version"] for v in versions if v["state"] == "AVAILABLE"]

    wait_for(lambda: serving() == [3], 30, "version 1 to be unloaded once 3 serves")
    assert alice.session.delete(hub.api("/gpulab/models/roll"), timeout=60).status_code == 204
