"""Issue 20, finding 3: Ceph answered everyone.

A second user, with a shell in their own server, runs the Ceph CLIs against the cluster
behind the hub (the suite's real scripts/ceph cluster): ``ceph health``, ``rados ls`` and
``rados get`` on RGW's data pool, ``rbd ls`` and ``radosgw-admin user info``. Every call
must fail, and nothing of another user's (their S3 secret key, their object's bytes,
their RBD image's name) may show up in what the attacker sees.
"""

import json
import os
import stat
import subprocess
import uuid
from pathlib import Path

from gpulab.hub.storage.rbd import RbdVolumes
from k8sfixture import s3_settings

RGW_DATA_POOL = "default.rgw.buckets.data"

# Run in bob's kernel: each CLI with CEPH_CONF at the cluster's own ceph.conf, and with a
# ceph.conf bob writes himself (mon host, and the keyrings' paths: the attacker knows them)
ATTACK = r"""
import json, os, subprocess, tempfile
from concurrent.futures import ThreadPoolExecutor

own = os.path.join(tempfile.mkdtemp(), "ceph.conf")
with open(own, "w") as f:
    f.write("[global]\nmon host = MON_HOST\nclient mount timeout = 10\n")
# the same, naming the cluster's keyrings (unreadable to bob, or this is over anyway)
own_keyring = os.path.join(tempfile.mkdtemp(), "ceph.conf")
with open(own_keyring, "w") as f:
    f.write("[global]\nmon host = MON_HOST\nclient mount timeout = 10\nkeyring = KEYRINGS\n")
commands = [
    ["ceph", "health", "--connect-timeout", "10"],
    ["rados", "-p", RGW_DATA_POOL, "ls"],
    ["rados", "-p", RGW_DATA_POOL, "get", OID, "-"],
    ["rbd", "ls", "rbd"],
    ["radosgw-admin", "user", "info", "--uid", UID],
]

def attempt(args):
    cmd, conf = args
    try:
        r = subprocess.run(cmd, env={**os.environ, "CEPH_CONF": conf}, capture_output=True,
                           timeout=60)
        return {"cmd": " ".join(cmd), "conf": conf, "rc": r.returncode,
                "out": (r.stdout + r.stderr).decode(errors="replace")}
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        return {"cmd": " ".join(cmd), "conf": conf, "rc": "timeout",
                "out": out.decode(errors="replace")}

with ThreadPoolExecutor(4) as pool:
    results = list(pool.map(attempt, [(c, f) for f in (CLUSTER_CONF, own, own_keyring) for c in commands]))
print(json.dumps({"uid": os.getuid(), "results": results}))
"""


def conf_value(conf: str, key: str) -> str:
    for line in Path(conf).read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    raise AssertionError(f"{key} not in {conf}")


def rgw_object_id(conf: str, key: str) -> str:
    """The RADOS object that holds an S3 object (RGW names it <bucket marker>_<key>)."""
    import rados

    with rados.Rados(conffile=conf) as cluster, cluster.open_ioctx(RGW_DATA_POOL) as ioctx:
        oids = [o.key for o in ioctx.list_objects() if o.key.endswith("_" + key)]
    assert len(oids) == 1, oids
    return oids[0]


def test_a_users_shell_gets_nothing_from_ceph(ceph, make_hub):
    prefix = f"t{uuid.uuid4().hex[:6]}-"
    hub = make_hub(
        {
            "gpus": {"ids": ["0"]},
            "storage": {**s3_settings(ceph), "s3_prefix": prefix, "s3_quota": "64MiB"},
        }
    ).start()
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    assert alice.spawn(profile="cpu").status_code in (201, 202)
    assert bob.spawn(profile="cpu").status_code in (201, 202)

    # alice stores an object with the keys her server got; the hub also made her an RBD image
    payload = f"alice-private-{uuid.uuid4().hex}"
    key = f"diary-{uuid.uuid4().hex[:8]}.txt"
    alice_keys = json.loads(
        alice.run(
            "import boto3, json, os\n"
            f"boto3.client('s3').put_object(Bucket=os.environ['GPULAB_S3_BUCKET'], Key={key!r}, "
            f"Body={payload!r}.encode())\n"
            "print(json.dumps({'secret': os.environ['AWS_SECRET_ACCESS_KEY']}))"
        ).strip()
    )
    secret = alice_keys["secret"]
    volumes = RbdVolumes(ceph.conf, pool="rbd", prefix=prefix + "home-")
    image = volumes.ensure("alice", 64 * 2**20).name
    volumes.close()
    oid = rgw_object_id(ceph.conf, key)
    uid = prefix + "alice"

    # the same commands work for root on the hub's side: they are right, and the data is there
    root_env = {**os.environ, "CEPH_CONF": ceph.conf}
    for cmd, expect in (
        (["rados", "-p", RGW_DATA_POOL, "get", oid, "-"], payload),
        (["radosgw-admin", "user", "info", "--uid", uid], secret),
        (["rbd", "ls", "rbd"], image),
    ):
        r = subprocess.run(cmd, env=root_env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and expect in r.stdout, (cmd, r.stdout, r.stderr)

    data = Path(ceph.conf).parent
    keyrings = sorted(str(p) for p in data.rglob("*keyring*"))
    code = ATTACK
    for name, value in {
        "MON_HOST": conf_value(ceph.conf, "mon host"),
        "KEYRINGS": ",".join(keyrings) or str(data / "keyring"),
        "RGW_DATA_POOL": repr(RGW_DATA_POOL),
        "OID": repr(oid),
        "UID": repr(uid),
        "CLUSTER_CONF": repr(ceph.conf),
    }.items():
        code = code.replace(name, value)
    report = json.loads(bob.run(code, timeout=300).strip().splitlines()[-1])
    assert report["uid"] != 0  # bob's shell is his own unix account, not root

    for r in report["results"]:
        where = f"bob ran `{r['cmd']}` with CEPH_CONF={r['conf']}: rc {r['rc']}\n{r['out'][-600:]}"
        assert r["rc"] != 0, where
        for leaked in (secret, payload, image, "HEALTH_"):
            assert leaked not in r["out"], where

    # and the secrets Ceph keeps on the hub's machine are root's alone
    assert keyrings, f"no keyring in {data}: the cluster runs without cephx"
    assert stat.S_IMODE(data.stat().st_mode) & 0o077 == 0
    for path in keyrings:
        st = os.stat(path)
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) & 0o077 == 0, path
