"""User servers get their own S3 bucket and keys on real Ceph RGW, and never the admin's.

A module apart from test_servers_storage.py (home volumes): the suite's parallel workers
run everything on Ceph in one worker (tests/conftest.py)."""

import json
import subprocess
import uuid

import k8sfixture
from hubfixture import BIN

S3_PROBE = """
import json, os, boto3, botocore.exceptions
s3 = boto3.client("s3")  # no arguments: everything comes from the environment
mine = os.environ["GPULAB_S3_BUCKET"]
s3.put_object(Bucket=mine, Key="hello.txt", Body=b"hi from the notebook")
result = {
    "read_back": s3.get_object(Bucket=mine, Key="hello.txt")["Body"].read().decode(),
    "buckets": [b["Name"] for b in s3.list_buckets()["Buckets"]],
    "bucket": mine,
    "has_admin_key": ADMIN_KEY in "".join(os.environ.values()),
}
try:
    s3.list_objects_v2(Bucket=OTHER)
    result["other"] = "allowed"
except botocore.exceptions.ClientError as e:
    result["other"] = e.response["Error"]["Code"]
print(json.dumps(result))
"""


def s3_settings(ceph, prefix: str) -> dict:
    """A hub on the suite's Ceph RGW, its accounts and buckets named with ``prefix``."""
    storage = {**k8sfixture.s3_settings(ceph), "s3_prefix": prefix, "s3_quota": "64MiB"}
    return {"gpus": {"ids": ["0"]}, "storage": storage}


def test_servers_get_their_own_bucket_with_no_arguments_needed(ceph, make_hub):
    prefix = f"t{uuid.uuid4().hex[:6]}-"
    hub = make_hub(s3_settings(ceph, prefix)).start()
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    assert alice.spawn(profile="gpu-1").status_code in (201, 202)
    assert bob.spawn(profile="cpu").status_code in (201, 202)

    code = S3_PROBE.replace("ADMIN_KEY", repr(ceph.s3_admin_access_key)).replace(
        "OTHER", repr(prefix + "bob")
    )
    result = json.loads(alice.run(code).strip().splitlines()[-1])
    assert result["bucket"] == prefix + "alice"
    assert result["read_back"] == "hi from the notebook"
    assert result["buckets"] == [prefix + "alice"]
    assert result["has_admin_key"] is False
    assert result["other"] == "AccessDenied"

    env = json.loads(
        alice.run(
            "import os, json; print(json.dumps({k: os.environ.get(k) for k in "
            "('AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3', 'S3_ENDPOINT')}))"
        ).strip()
    )
    assert set(env.values()) == {ceph.s3_endpoint}


def test_unreachable_s3_fails_the_spawn_cleanly(make_hub):
    hub = make_hub(
        {
            "gpus": {"ids": ["0"]},
            "storage": {
                "s3_endpoint": "http://127.0.0.1:9",
                "s3_admin_access_key": "x",
                "s3_admin_secret_key": "y",
            },
        }
    ).start()
    alice = hub.create_user("alice")
    r = alice.spawn(profile="gpu-1")
    assert r.status_code == 503
    assert "unreachable" in r.json()["message"] and "storage" in r.json()["message"]
    assert alice.model()["servers"] == {}
    assert hub.holders() == {} and hub.unix_pids("alice") == []
    # the hub itself stays up
    assert hub.gpus()["free"] == 1


def test_storage_api_cli_and_key_rotation(ceph, make_hub):
    prefix = f"t{uuid.uuid4().hex[:6]}-"
    hub = make_hub(s3_settings(ceph, prefix)).start()
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    alice.spawn(profile="cpu")
    alice.run(
        "import boto3, os; open('data.bin', 'wb').write(os.urandom(300_000)); "
        "boto3.client('s3').put_object(Bucket=os.environ['GPULAB_S3_BUCKET'], Key='k', "
        "Body=b'x' * 200_000)"
    )
    r = alice.session.get(hub.api("/gpulab/storage"), timeout=30)
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["volume"]["backend"] == "local" and info["volume"]["used_bytes"] >= 300_000
    assert info["volume"]["size_bytes"] == 10 * 2**30
    assert info["s3"]["bucket"] == prefix + "alice" and info["s3"]["objects"] == 1
    assert info["s3"]["used_bytes"] >= 200_000 and info["s3"]["quota_bytes"] == 64 * 2**20
    assert "secret_key" not in info["s3"]

    assert bob.session.get(hub.api("/gpulab/storage?user=alice"), timeout=30).status_code == 403
    r = bob.session.post(hub.api("/gpulab/storage/s3/rotate-keys?user=alice"), timeout=30)
    assert r.status_code == 403
    assert bob.session.get(hub.api("/gpulab/storage"), timeout=30).json()["s3"] is None

    out = subprocess.run(
        [str(BIN / "gpulab"), "storage", "--user", "alice"],
        env={**hub.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"/{prefix}alice" in out.stdout and "10.0 GiB" in out.stdout and "64.0 MiB" in out.stdout

    old_key = info["s3"]["access_key"]
    r = alice.session.post(hub.api("/gpulab/storage/s3/rotate-keys"), timeout=30)
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["access_key"] != old_key and new["secret_key"]
    probe = (
        "import boto3, os, botocore.exceptions\n"
        "try:\n"
        "    boto3.client('s3').get_object(Bucket=os.environ['GPULAB_S3_BUCKET'], Key='k'); print('ok')\n"
        "except botocore.exceptions.ClientError as e:\n"
        "    print(e.response['Error']['Code'])\n"
    )
    assert alice.run(probe).strip() in ("InvalidAccessKeyId", "AccessDenied")
    alice.stop()
    alice.spawn(profile="cpu")
    assert alice.run(probe).strip() == "ok"
