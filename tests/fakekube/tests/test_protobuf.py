"""Protobuf request bodies, as helm's release storage sends them."""

from __future__ import annotations

import requests

from fakekube import FakeKube
from fakekube.protobuf import field as pb


def _k8s_protobuf(api_version: str, kind: str, raw: bytes) -> bytes:
    return b"k8s\x00" + pb(1, pb(1, api_version) + pb(2, kind)) + pb(2, raw)


def test_protobuf_bodies_of_secrets_and_deletes_are_decoded() -> None:
    """What helm's release storage sends (client-go in protobuf): a Secret created and
    deleted with protobuf bodies; a kind not decoded here is 415, a broken body 400."""
    as_protobuf = {"Content-Type": "application/vnd.kubernetes.protobuf"}
    meta = pb(1, "sh.helm.release.v1.lab.v1") + pb(11, pb(1, "owner") + pb(2, "helm"))
    meta += pb(8, b"")  # the zero creationTimestamp client-go always sends
    secret = pb(1, meta) + pb(2, pb(1, "release") + pb(2, b"\x00\xffH4sI"))
    secret += pb(3, "helm.sh/release.v1")
    with FakeKube(nodes=[]) as kube:
        secrets = f"{kube.url}/api/v1/namespaces/default/secrets"
        r = requests.post(secrets, data=_k8s_protobuf("v1", "Secret", secret), headers=as_protobuf)
        assert r.status_code == 201, r.text
        got = requests.get(f"{secrets}/sh.helm.release.v1.lab.v1").json()
        assert got["type"] == "helm.sh/release.v1"
        assert got["metadata"]["labels"] == {"owner": "helm"}
        assert got["data"] == {"release": "AP9INHNJ"}  # base64 of the bytes sent
        assert got["metadata"]["creationTimestamp"]  # the server's, not the zero one

        pod_body = _k8s_protobuf("v1", "Pod", pb(1, pb(1, "p")))
        r = requests.post(
            f"{kube.url}/api/v1/namespaces/default/pods", data=pod_body, headers=as_protobuf
        )
        assert r.status_code == 415 and r.json()["reason"] == "UnsupportedMediaType"
        r = requests.post(secrets, data=b"k8s\x00\x0a\xff", headers=as_protobuf)
        assert r.status_code == 400 and "could not be decoded as protobuf" in r.json()["message"]

        options = pb(1, 0) + pb(4, "Background")  # gracePeriodSeconds 0
        r = requests.delete(
            f"{secrets}/sh.helm.release.v1.lab.v1",
            data=_k8s_protobuf("v1", "DeleteOptions", options),
            headers=as_protobuf,
        )
        assert r.status_code == 200, r.text
        assert requests.get(f"{secrets}/sh.helm.release.v1.lab.v1").status_code == 404
