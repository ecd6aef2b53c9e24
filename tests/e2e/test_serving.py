"""Model serving on the local backend, through a real hub: SavedModels exported with real
TensorFlow on the user's home, served by gpulab's model servers run as the user, called
over TF Serving's REST API (through the hub and on the replica's socket) and its gRPC API with
the official ``tensorflow_serving.apis`` stubs, and compared with the SavedModel called
in-process."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from hubfixture import export_to_home, predict_together, wait_for


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


def raw_rest(address: str, path: str, body: dict | None = None, token: str | None = None):
    """(status, JSON answer) of a REST call on a replica's own socket (``unix:PATH``)."""
    conn = http.client.HTTPConnection("localhost", timeout=30)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.sock.settimeout(30)
    try:
        conn.sock.connect(address.removeprefix("unix:"))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = json.dumps(body).encode() if body is not None else None
        conn.request("POST" if body is not None else "GET", path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def model_servers(hub, user: str) -> dict[str, dict[str, str]]:
    """The user's running model servers: REST address (``unix:PATH``) -> environment (and
    ``pid``)."""
    found = subprocess.run(
        ["pgrep", "-u", hub.unix_account(user), "-f", "gpulab.serving"],
        capture_output=True,
        text=True,
    ).stdout.split()
    servers = {}
    for pid in found:
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"--rest_api_socket_path" not in argv or argv[0].endswith(b"sh"):
            continue  # not a model server, or the shell that started one
        env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        rest = argv[argv.index(b"--rest_api_socket_path") + 1].decode()
        servers[f"unix:{rest}"] = {**env, "pid": pid}
    return servers


X = [1.0, 2.0, 5.0]


def test_deploy_then_predict_over_rest_and_grpc_as_the_savedmodel_answers(hub):
    alice = hub.create_user("sv-alice")
    v1 = export_to_home(hub, alice.name, "models/line/1", 0.5, 2.0)
    v2 = export_to_home(hub, alice.name, "models/line/2", 0.5, 3.0)
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

    # the replica's own sockets: only its owner (and root, the hub) can connect, so they
    # answer without the model's token (as TF Serving's own clients call), and with it
    replica = m["replica_status"][0]
    assert replica["rest"].startswith("unix:") and replica["grpc"].startswith("unix:")
    token = model(alice, "line")["token"]
    code, answer = raw_rest(replica["rest"], "/v1/models/line:predict", {"instances": X})
    assert (code, answer) == (200, {"predictions": want2})
    code, answer = raw_rest(replica["rest"], "/v1/models/line:predict", {"instances": X}, token)
    assert (code, answer) == (200, {"predictions": want2})

    # gRPC with the official stubs
    answer = grpc_predict(replica["grpc"], token, "line", X)
    assert answer.model_spec.name == "line" and answer.model_spec.version.value == 2
    assert answer.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(answer.outputs["y"]).tolist() == want2
    answer = grpc_predict(replica["grpc"], token, "line", X, version_label="stable")
    assert tf.make_ndarray(answer.outputs["y"]).tolist() == want1
    answer = grpc_predict(replica["grpc"], None, "line", X)
    assert tf.make_ndarray(answer.outputs["y"]).tolist() == want2
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
    with pytest.raises(OSError):
        raw_rest(replica["rest"], "/v1/models/line", token=token)


STOCK_CLIENT = """
import grpc, numpy as np, tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
    model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

with grpc.insecure_channel({address!r}) as channel:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "stock"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1, 2], np.float32)))
    answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    print("predict", tf.make_ndarray(answer.outputs["y"]).tolist())
    meta = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta.model_spec.name = "stock"
    answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(meta)
    defs = get_model_metadata_pb2.SignatureDefMap()
    answer.metadata["signature_def"].Unpack(defs)
    print("signatures", sorted(defs.signature_def))
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "stock"
    answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status)
    print("versions", [v.version for v in answer.model_version_status])
"""


def test_tf_servings_own_clients_call_from_the_owners_server_unchanged(hub):
    """The official stubs, with no token or other metadata, from a notebook kernel of the
    owner's server: the replica's gRPC socket is the owner's alone."""
    ivy = hub.create_user("sv-stock")
    assert ivy.spawn(profile="cpu").status_code in (201, 202)
    export_to_home(hub, ivy.name, "models/stock/1", 0.5, 2.0)
    deploy(ivy, {"name": "stock", "base_path": "models/stock"})
    m = wait_available(ivy, "stock")
    address = m["replica_status"][0]["grpc"]
    out = ivy.run(STOCK_CLIENT.format(address=address), timeout=120)
    assert "predict [2.5, 3.0]" in out, out
    assert "signatures ['__saved_model_init_op', 'serving_default']" in out, out
    assert "versions [1]" in out, out
    assert ivy.session.delete(hub.api("/gpulab/models/stock"), timeout=60).status_code == 204


def test_a_new_version_rolls_in_while_clients_call(hub):
    alice = hub.create_user("sv-roll")
    export_to_home(hub, alice.name, "models/roll/1", 0.5, 2.0)
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
        export_to_home(hub, alice.name, "models/roll/3", 0.5, 10.0)
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


def test_bad_deployments_and_requests_get_clear_errors(hub):
    alice = hub.create_user("sv-bad")
    export_to_home(hub, alice.name, "models/ok/1", 0.5, 2.0)
    from gpulab.spawner.accounts import ensure_account

    account = ensure_account(hub.unix_prefix, alice.name, hub.data_root)
    for folder in ("models/empty", "models/nopb", "models/nopb/1"):
        (account.home / folder).mkdir()
        os.chown(account.home / folder, account.uid, account.gid)

    def refused(spec: dict, status: int, words: str) -> None:
        r = alice.session.post(hub.api("/gpulab/models"), json=spec, timeout=30)
        assert r.status_code == status, r.text
        assert words in r.json()["message"], r.json()

    refused({"name": "x", "base_path": "models/none"}, 400, "not a folder in your home")
    refused({"name": "x", "base_path": "models/empty"}, 400, "no numbered version folder")
    refused({"name": "x", "base_path": "models/nopb"}, 400, "~/models/nopb/1 is not a SavedModel")
    refused({"name": "x", "base_path": "models/ok", "versions": [1, 5]}, 400, "has no version 5")
    refused({"name": "x", "base_path": "../../etc"}, 400, "outside your home")
    refused({"name": "x", "base_path": "/etc"}, 400, "outside your home")
    refused({"name": "Bad Name", "base_path": "models/ok"}, 400, "name:")
    refused({"name": "x", "base_path": "models/ok", "replicas": 0}, 400, "replicas:")
    refused({"name": "x", "base_path": "models/ok", "gpus": -1}, 400, "gpus:")
    refused({"name": "x", "base_path": "models/ok", "access": "world"}, 400, "access:")
    refused({"name": "x", "base_path": "models/ok", "labels": {"stable": 4}}, 400, "labels.stable")
    refused({"name": "x", "base_path": "models/ok", "colour": "red"}, 400, "unknown field")
    refused({"name": "x", "base_path": "models/ok", "gpus": 3}, 403, "GPU quota exceeded")
    refused({"name": "x", "base_path": "models/ok", "gpus": 1, "replicas": 3}, 403, "asks for 3")

    deploy(alice, {"name": "ok", "base_path": "models/ok"})
    refused({"name": "ok", "base_path": "models/ok"}, 409, "already has a model named ok")
    wait_available(alice, "ok")

    def error(path: str, body, status: int) -> str:
        r = alice.session.post(
            hub.api(f"/gpulab/models/ok{path}"),
            data=body if isinstance(body, bytes) else None,
            json=None if isinstance(body, bytes) else body,
            timeout=30,
        )
        assert r.status_code == status, r.text
        return r.json()["error"]

    assert error(":predict", b'{"instances": [1.0', 400).startswith("JSON Parse error")
    assert error(":predict", b"", 400) == "JSON Parse error: The document is empty"
    assert "does not have named input: z" in error(":predict", {"instances": [{"z": 1.0}]}, 400)
    assert "Missing named input: x" in error(":predict", {"inputs": {"z": [1.0]}}, 400)
    assert "is not of expected type: float" in error(":predict", {"instances": ["a"]}, 400)
    assert "Missing 'inputs' or 'instances' key" in error(":predict", {}, 400)
    assert error("/versions/9:predict", {"instances": [1.0]}, 404) == (
        "Servable not found for request: Specific(ok, 9)"
    )
    assert error("/labels/nope:predict", {"instances": [1.0]}, 400) == (
        "Unrecognized servable version label: nope"
    )
    assert "Serving signature key" in error(
        ":predict", {"signature_name": "other", "instances": [1.0]}, 400
    )
    assert ":classify" in error(":classify", {"examples": []}, 501)

    # bob sees nothing of alice's private model and cannot call or undeploy it
    bob = hub.create_user("sv-bob", groups=("svteam",))
    assert bob.session.get(hub.api("/gpulab/models/ok?user=sv-bad"), timeout=30).status_code == 403
    assert (
        bob.session.delete(hub.api("/gpulab/models/ok?user=sv-bad"), timeout=30).status_code == 403
    )
    serving = hub.api(f"/gpulab/serving/{alice.name}/v1/models/ok:predict")
    r = bob.session.post(serving, json={"instances": [1.0]}, timeout=30)
    assert r.status_code == 404 and "that you may call" in r.json()["error"]
    token = model(alice, "ok")["token"]
    anonymous = {"Authorization": f"Bearer {token}"}
    r = requests.post(serving, json={"instances": [1.0]}, headers=anonymous, timeout=30)
    assert r.status_code == 404  # private: the token opens only the raw ports
    assert "token" not in bob.session.get(hub.api("/gpulab/models"), timeout=30).text

    # shared with bob's group, then public with its token
    r = alice.session.patch(hub.api("/gpulab/models/ok"), json={"access": "group:svteam"})
    assert r.status_code == 200, r.text
    r = bob.session.post(serving, json={"instances": [1.0]}, timeout=30)
    assert r.status_code == 200 and r.json() == {"predictions": [2.5]}
    r = alice.session.patch(hub.api("/gpulab/models/ok"), json={"access": "public"})
    assert r.status_code == 200, r.text
    r = requests.post(serving, json={"instances": [1.0]}, headers=anonymous, timeout=30)
    assert r.status_code == 200 and r.json() == {"predictions": [2.5]}
    r = requests.post(serving, json={"instances": [1.0]}, timeout=30)
    assert r.status_code == 403
    r = requests.post(serving, json={"instances": [1.0]}, headers={"Authorization": "Bearer x"})
    assert r.status_code == 404
    r = alice.session.patch(hub.api("/gpulab/models/ok"), json={"gpus": 1})
    assert r.status_code == 400 and "undeploy it and deploy again" in r.json()["message"]
    assert alice.session.delete(hub.api("/gpulab/models/ok"), timeout=60).status_code == 204


def test_gpu_replicas_hold_their_gpus_restart_when_they_die_and_free_them(hub):
    carol = hub.create_user("sv-gpu")
    export_to_home(hub, carol.name, "models/g/1", 0.5, 2.0)
    created = deploy(carol, {"name": "g", "base_path": "models/g", "gpus": 1, "replicas": 2})
    assert [len(r["gpus"]) for r in created["replica_status"]] == [1, 1]
    assert list(hub.holders().values()) == [carol.name, carol.name]
    m = wait_for(
        lambda: (
            (m := model(carol, "g"))["state"] == "available"
            and all(r["state"] == "available" for r in m["replica_status"])
            and m
        ),
        120,
        "both replicas to serve",
    )
    # each replica sees only its own GPU
    servers = model_servers(hub, carol.name)
    assert len(servers) == 2
    for replica in m["replica_status"]:
        env = servers[replica["rest"]]
        assert env["CUDA_VISIBLE_DEVICES"] == replica["gpus"][0]
    assert {r["gpus"][0] for r in m["replica_status"]} == set(hub.holders())

    # calls take turns over the replicas, and keep working when one dies
    for _ in range(4):
        assert predict(carol, "g", {"instances": [2.0]}).json() == {"predictions": [3.0]}
    first = m["replica_status"][0]["rest"]
    os.kill(int(servers[first]["pid"]), 9)
    for _ in range(10):
        assert predict(carol, "g", {"instances": [2.0]}).status_code == 200
    wait_for(
        lambda: model(carol, "g")["replica_status"][0]["restarts"] >= 1,
        30,
        "the dead replica to be restarted",
    )
    back = wait_for(
        lambda: (m := model(carol, "g"))["replica_status"][0]["state"] == "available" and m,
        120,
        "the restarted replica to serve again",
    )
    assert back["replica_status"][0]["message"] == "serving version 1"
    logs = carol.session.get(hub.api("/gpulab/models/g/logs?replica=0"), timeout=30).text
    assert logs.count("==> gpulab: model g, replica 0") == 2
    assert "Successfully loaded servable version {name: g version: 1}" in logs

    assert carol.session.delete(hub.api("/gpulab/models/g"), timeout=60).status_code == 204
    assert carol.name not in hub.holders().values()
    wait_for(lambda: not model_servers(hub, carol.name), 30, "the model servers to end")


def test_cli_deploys_lists_calls_updates_and_undeploys(hub, tmp_path):
    """Named as TF Serving's own example model is (an underscore in its name)."""
    from hubfixture import cells, gpulab, lines_with

    dave = hub.create_user("sv-cli")
    export_to_home(hub, dave.name, "models/cli/1", 0.5, 2.0)
    export_to_home(hub, dave.name, "models/cli/2", 2.0, 0.0)

    done = gpulab(hub, dave.token, "model", "deploy", "half_plus_two", "models/cli",
                  "--versions", "all", "--label", "stable=1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Model half_plus_two serves: serving version 2, 1" in done.stdout
    assert "Model half_plus_two: deploying" in done.stderr  # progress while it loads
    assert f"/hub/api/gpulab/serving/{dave.name}/v1/models/half_plus_two" in done.stdout

    listing = gpulab(hub, dave.token, "model", "list")
    row = cells(lines_with(listing.stdout, " half_plus_two ")[0])
    assert row[:5] == ["half_plus_two", "available", "2, 1", "1/1", "0"], listing.stdout

    request = tmp_path / "req.json"
    request.write_text(json.dumps({"instances": [1.0, 3.0]}))
    out = gpulab(hub, dave.token, "predict", "half_plus_two", "--json", str(request))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"predictions": [2.0, 6.0]}
    out = gpulab(hub, dave.token, "predict", "half_plus_two", "--json", "-", "--label", "stable",
                 stdin='{"inputs": [1.0]}')  # fmt: skip
    assert json.loads(out.stdout) == {"outputs": [2.5]}
    out = gpulab(
        hub, dave.token, "predict", "half_plus_two", "--json", "-", stdin='{"instances": ["a"]}'
    )
    assert out.returncode == 1 and "is not of expected type: float" in out.stderr
    out = gpulab(hub, dave.token, "predict", "half_plus_two", "--json", "-", stdin="[1, 2")
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    out = gpulab(
        hub, dave.token, "predict", "half_plus_two", "--json", str(tmp_path / "missing.json")
    )
    assert out.returncode == 2 and "cannot read" in out.stderr

    # labels move without a restart: stable now names version 2
    out = gpulab(hub, dave.token, "model", "update", "half_plus_two", "--label", "stable=2")
    assert out.returncode == 0, out.stderr

    def stable_is_v2():
        r = predict(dave, "half_plus_two", {"instances": [1.0]}, "/labels/stable:predict")
        return r.status_code == 200 and r.json() == {"predictions": [2.0]}

    wait_for(stable_is_v2, 30, "the label to move")
    status = gpulab(hub, dave.token, "model", "status", "half_plus_two", "--show-token")
    assert status.returncode == 0, status.stderr
    assert "stable=2" in status.stdout and model(dave, "half_plus_two")["token"] in status.stdout
    logs = gpulab(hub, dave.token, "model", "logs", "half_plus_two")
    assert "Successfully loaded servable version {name: half_plus_two version: 2}" in logs.stdout
    out = gpulab(hub, dave.token, "model", "update", "half_plus_two")
    assert out.returncode == 2 and "nothing to change" in out.stderr

    # update follows the replicas to the versions asked for, as deploy does; and back to
    # a version unloaded before, which is loaded again
    for version, want in ((1, [2.5]), (2, [2.0])):
        out = gpulab(hub, dave.token, "model", "update", "half_plus_two",
                     "--versions", str(version), "--no-labels")  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert f"Model half_plus_two: available: serving version {version}" in out.stdout
        assert f"rolling to version {version}" in out.stderr  # the progress line
        r = predict(dave, "half_plus_two", {"instances": [1.0]})
        assert r.status_code == 200 and r.json() == {"predictions": want}, r.text
    out = gpulab(hub, dave.token, "model", "status", "nope")
    assert out.returncode == 1 and "has no model named nope" in out.stderr

    out = gpulab(hub, dave.token, "model", "undeploy", "half_plus_two")
    assert out.returncode == 0 and "Undeployed model half_plus_two" in out.stdout
    assert gpulab(hub, dave.token, "model", "list").stdout.strip() == "No models"


def test_model_servers_outlive_a_hub_restart_and_are_supervised_again(make_hub):
    hub = make_hub({"gpus": {"ids": ["0"]}}).start()
    erin = hub.create_user("sv-erin")
    export_to_home(hub, erin.name, "models/keep/1", 0.5, 2.0)
    deploy(erin, {"name": "keep", "base_path": "models/keep", "gpus": 1})
    deploy(erin, {"name": "gone", "base_path": "models/keep"})
    before = wait_available(erin, "keep")
    wait_available(erin, "gone")
    token, rest = before["token"], before["replica_status"][0]["rest"]

    def served() -> dict[str, str]:
        """Model name -> the pid of its server."""
        return {env["GPULAB_MODEL"]: env["pid"] for env in model_servers(hub, erin.name).values()}

    servers = served()
    assert servers.keys() == {"keep", "gone"}
    hub.kill()
    # while no hub runs, the model server goes on answering on its own socket
    code, answer = raw_rest(rest, "/v1/models/keep:predict", {"instances": [2.0]}, token)
    assert (code, answer) == (200, {"predictions": [3.0]})
    hub.start()
    # undeployed the moment the hub answers, before it has taken the servers over: the
    # request waits for that, and the server ends
    r = erin.session.delete(hub.api("/gpulab/models/gone"), timeout=60)
    assert r.status_code == 204, r.text
    wait_for(lambda: served().keys() == {"keep"}, 30, "the undeployed model's server to end")
    assert predict(erin, "keep", {"instances": [4.0]}).json() == {"predictions": [4.0]}
    after = model(erin, "keep")
    assert after["state"] == "available" and after["replica_status"][0]["restarts"] == 0
    assert served() == {"keep": servers["keep"]}
    assert hub.holders() == {"0": erin.name}
    # what the hub did is in its log, as the hub's own messages are
    line = f"Model {erin.name}/keep: supervised again after a hub restart"
    wait_for(lambda: line in hub.log_path.read_text(errors="replace"), 10, "the hub's log")
    assert erin.session.delete(hub.api("/gpulab/models/keep"), timeout=60).status_code == 204
    assert hub.gpus()["free"] == 1
    wait_for(lambda: not model_servers(hub, erin.name), 30, "the model server to end")


def scrape(scraper, name: str, **params) -> dict[str, dict[tuple, float]]:
    """The model's metrics through the hub, read by Prometheus' own parser (as a scrape
    with the scraper's hub token as its bearer token): samples by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    r = requests.get(
        scraper.hub.api(f"/gpulab/models/{name}/metrics"),
        params=params,
        headers={"Authorization": f"Bearer {scraper.token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            name_ = family.name if family.type == "counter" else sample.name
            out.setdefault(name_, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


GRAPH_RUNS = ":tensorflow:core:graph_runs"
BATCHING = {"max_batch_size": 8, "batch_timeout_micros": 500000, "num_batch_threads": 1}
BATCHING_TEXT = """
max_batch_size { value: 8 }
batch_timeout_micros { value: 500000 }
num_batch_threads { value: 1 }
"""


def test_batching_runs_calls_that_arrive_together_as_one_and_its_metrics_come_through_the_hub(
    hub, tmp_path
):
    from gpulab.serving.batching import BatchingParameters
    from gpulab.spawner.accounts import ensure_account
    from hubfixture import gpulab

    fay = hub.create_user("sv-batch")
    account = ensure_account(hub.unix_prefix, fay.name, hub.data_root)
    export_to_home(hub, fay.name, "models/b/1", 0.5, 2.0)

    def refused(spec: dict, status: int, words: str) -> None:
        r = fay.session.post(hub.api("/gpulab/models"), json=spec, timeout=30)
        assert r.status_code == status, r.text
        assert words in r.json()["message"], r.json()

    base = {"name": "b", "base_path": "models/b"}
    refused({**base, "batching": {"max_batch_size": 0}}, 400, "batching.max_batch_size:")
    refused({**base, "batching": {"num_batch_threads": 100}}, 400, "batching.num_batch_threads:")
    refused(
        {**base, "batching": {"max_batch_size": 8, "allowed_batch_sizes": [4, 6]}},
        400,
        "batching.allowed_batch_sizes: the last allowed_batch_sizes entry must equal "
        "max_batch_size (6 != 8)",
    )
    refused({**base, "batching": "on"}, 400, "batching: true (TF Serving's defaults), false")
    # the batching parameters file is replaced whole as the model config is: a folder in
    # its place fails the deploy, saying so
    folder = account.home / ".gpulab/models/c/batching.config"
    folder.mkdir(parents=True)
    for made in (folder, folder.parent, folder.parent.parent):
        os.chown(made, account.uid, account.gid)
    refused({"name": "c", "base_path": "models/b", "batching": True}, 409,
            "cannot write the batching parameters ~/.gpulab/models/c/batching.config")  # fmt: skip

    # the CLI takes TF Serving's own batching parameters file
    params = tmp_path / "batching.txt"
    params.write_text("thread_pool_name { value: 'x' }\n")
    out = gpulab(hub, fay.token, "model", "deploy", "b", "models/b", "--batching", str(params))
    assert out.returncode == 2 and "sets thread_pool_name" in out.stderr, out.stderr
    params.write_text(BATCHING_TEXT)
    out = gpulab(hub, fay.token, "model", "deploy", "b", "models/b", "--batching", str(params))
    assert out.returncode == 0, out.stderr
    m = model(fay, "b")
    assert m["state"] == "available" and m["batching"] == BATCHING
    assert m["endpoints"]["metrics"] == "/hub/api/gpulab/models/b/metrics"
    written = (account.home / ".gpulab/models/b/batching.config").read_text()
    assert BatchingParameters.from_text(written).batch_timeout_micros == 500000
    status = gpulab(hub, fay.token, "model", "status", "b")
    assert "max_batch_size 8, batch_timeout_micros 500000, num_batch_threads 1" in status.stdout

    before = scrape(fay, "b").get(GRAPH_RUNS, {}).get((("replica", "0"),), 0)
    answers = predict_together(hub, fay, "b")
    assert answers == {i: {"predictions": [0.5 * i + 2.0]} for i in range(4)}
    runs = scrape(fay, "b")[GRAPH_RUNS][(("replica", "0"),)] - before
    assert 1 <= runs < 4, runs  # the four calls ran as fewer calls of the model

    r = fay.session.patch(hub.api("/gpulab/models/b"), json={"batching": False}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["message"] == (
        "batching: cannot change on a deployed model; undeploy it and deploy again"
    )
    # another user sees nothing of the model's metrics
    gus = hub.create_user("sv-batch-gus")
    r = gus.session.get(hub.api("/gpulab/models/b/metrics"), timeout=30)
    assert r.status_code == 404 and "has no model named b" in r.json()["message"], r.text
    r = gus.session.get(hub.api(f"/gpulab/models/b/metrics?user={fay.name}"), timeout=30)
    assert r.status_code == 403, r.text
    # admins scrape anyone's with ?user=
    assert GRAPH_RUNS in scrape(hub.create_user("sv-batch-admin", admin=True), "b", user=fay.name)
    assert fay.session.delete(hub.api("/gpulab/models/b"), timeout=60).status_code == 204


def test_a_replica_that_does_not_answer_is_named_and_the_others_metrics_come(hub):
    hal = hub.create_user("sv-metrics")
    export_to_home(hub, hal.name, "models/two/1", 0.5, 2.0)
    deploy(hal, {"name": "two", "base_path": "models/two", "replicas": 2})
    m = wait_for(
        lambda: (
            (m := model(hal, "two"))["state"] == "available"
            and all(r["state"] == "available" for r in m["replica_status"])
            and m
        ),
        120,
        "both replicas to serve",
    )
    # both replicas loaded the model: each one's load, labelled with its replica
    loads = scrape(hal, "two")[":tensorflow:cc:saved_model:load_attempt_count"]
    assert sorted(dict(k)["replica"] for k in loads) == ["0", "1"]
    assert all(dict(k)["status"] == "success" for k in loads), loads
    # replica 1's server stopped (and not back yet): replica 0's metrics, and a comment
    servers = model_servers(hub, hal.name)
    second = m["replica_status"][1]["rest"]
    os.kill(int(servers[second]["pid"]), 19)  # SIGSTOP: it holds its socket, answers nothing
    try:
        r = hal.session.get(hub.api("/gpulab/models/two/metrics"), timeout=60)
        assert r.status_code == 200, r.text
        assert r.text.startswith("# replica 1 did not answer: "), r.text[:200]
        assert 'replica="0"' in r.text and 'replica="1"' not in r.text
    finally:
        os.kill(int(servers[second]["pid"]), 18)  # SIGCONT
    assert hal.session.delete(hub.api("/gpulab/models/two"), timeout=60).status_code == 204
