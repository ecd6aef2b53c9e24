"""Home volumes on real Ceph RBD and S3 buckets on real Ceph RGW (started by scripts/ceph)."""

import threading
import uuid

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from gpulab.hub.storage import StorageError, StorageUnavailable
from gpulab.hub.storage.rbd import RbdVolumes
from gpulab.hub.storage.s3 import RgwAccounts, bucket_name

MiB = 1 << 20


@pytest.fixture
def volumes(ceph):
    vols = RbdVolumes(ceph.conf, pool="rbd", prefix=f"t{uuid.uuid4().hex[:6]}-")
    yield vols
    vols.close()


def write(ceph, image_name: str, offset: int, data: bytes) -> None:
    import rados
    import rbd

    with rados.Rados(conffile=ceph.conf) as cluster, cluster.open_ioctx("rbd") as ioctx:
        with rbd.Image(ioctx, image_name) as image:
            image.write(data, offset)


def read(ceph, image_name: str, offset: int, length: int) -> bytes:
    import rados
    import rbd

    with rados.Rados(conffile=ceph.conf) as cluster, cluster.open_ioctx("rbd") as ioctx:
        with rbd.Image(ioctx, image_name) as image:
            return image.read(offset, length)


def test_volume_lifecycle_grow_measure_and_refuse_to_shrink(ceph, volumes):
    vol = volumes.ensure("alice", 64 * MiB)
    assert (vol.backend, vol.size_bytes, vol.used_bytes) == ("rbd", 64 * MiB, 0)
    assert volumes.ensure("alice", 32 * MiB).size_bytes == 64 * MiB  # existing image kept

    write(ceph, vol.name, 0, b"x" * (6 * MiB))
    used = volumes.info("alice").used_bytes
    assert 6 * MiB <= used <= 8 * MiB  # whole 4 MiB objects, like rbd du

    assert volumes.resize("alice", 128 * MiB).size_bytes == 128 * MiB
    with pytest.raises(StorageError, match="refusing to shrink"):
        volumes.resize("alice", 16 * MiB)
    assert volumes.info("alice").size_bytes == 128 * MiB
    assert read(ceph, vol.name, 0, 4) == b"xxxx"
    with pytest.raises(StorageError) as info:
        volumes.info("nobody")
    assert info.value.status == 404


def test_snapshots_rollback_and_clone(ceph, volumes):
    vol = volumes.ensure("bob", 32 * MiB)
    write(ceph, vol.name, 0, b"first")
    snap = volumes.create_snapshot("bob", "before-experiment")
    assert snap.name == "before-experiment" and snap.created
    write(ceph, vol.name, 0, b"later")
    with pytest.raises(StorageError, match="already has a snapshot"):
        volumes.create_snapshot("bob", "before-experiment")
    with pytest.raises(StorageError, match="invalid snapshot name"):
        volumes.create_snapshot("bob", "../etc")

    volumes.rollback("bob", "before-experiment")
    assert read(ceph, vol.name, 0, 5) == b"first"

    copy = volumes.clone("bob", "before-experiment", "bob-copy")
    assert read(ceph, copy.name, 0, 5) == b"first"
    write(ceph, copy.name, 0, b"clone")
    assert read(ceph, vol.name, 0, 5) == b"first"  # copy-on-write: the original is untouched
    with pytest.raises(StorageError, match="has clones"):
        volumes.delete_snapshot("bob", "before-experiment")
    volumes.delete("bob-copy", confirm="bob-copy")
    volumes.delete_snapshot("bob", "before-experiment")
    assert volumes.snapshots("bob") == []


def test_delete_needs_confirmation_no_snapshots_and_no_user(ceph, volumes):
    import rados
    import rbd

    vol = volumes.ensure("carol", 16 * MiB)
    with pytest.raises(StorageError, match="confirm"):
        volumes.delete("carol", confirm=None)
    volumes.create_snapshot("carol", "keep")
    with pytest.raises(StorageError, match="has snapshots"):
        volumes.delete("carol", confirm="carol")
    volumes.delete_snapshot("carol", "keep")

    # an open image (a mapped volume) has a watcher: rollback and delete are refused
    volumes.create_snapshot("carol", "s1")
    with rados.Rados(conffile=ceph.conf) as cluster, cluster.open_ioctx("rbd") as ioctx:
        with rbd.Image(ioctx, vol.name):
            with pytest.raises(StorageError, match="in use"):
                volumes.rollback("carol", "s1")
    volumes.delete_snapshot("carol", "s1")
    with rados.Rados(conffile=ceph.conf) as cluster, cluster.open_ioctx("rbd") as ioctx:
        with rbd.Image(ioctx, vol.name):
            with pytest.raises(StorageError, match="in use"):
                volumes.delete("carol", confirm="carol")
    volumes.delete("carol", confirm="carol")
    assert not volumes.exists("carol")


def test_concurrent_resizes_and_snapshots_serialise(ceph, volumes):
    volumes.ensure("dave", 8 * MiB)
    sizes = [(8 + i) * MiB for i in range(1, 9)]
    errors = []

    def grow(size):
        try:
            volumes.resize("dave", size)
        except StorageError as e:  # a smaller size after a larger one is refused, not lost
            errors.append(e)

    def snap(i):
        volumes.create_snapshot("dave", f"s{i}")

    threads = [threading.Thread(target=grow, args=(s,)) for s in sizes]
    threads += [threading.Thread(target=snap, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    vol = volumes.info("dave")
    assert vol.size_bytes == max(sizes)
    assert sorted(s.name for s in vol.snapshots) == [f"s{i}" for i in range(8)]
    assert all("refusing to shrink" in str(e) for e in errors)


def test_ceph_unreachable_is_503(tmp_path):
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nmon host = 127.0.0.1:1\nauth client required = none\n")
    with pytest.raises(StorageUnavailable) as info:
        RbdVolumes(str(conf), connect_timeout=2).info("alice")
    assert info.value.status == 503
    with pytest.raises(StorageUnavailable) as info:
        RgwAccounts("http://127.0.0.1:1", "a", "b").ensure("alice")
    assert "unreachable" in str(info.value)


# -- S3 ------------------------------------------------------------------------------


@pytest.fixture
def rgw(ceph):
    tag = f"t{uuid.uuid4().hex[:6]}-"
    return RgwAccounts(
        ceph.s3_endpoint,
        ceph.s3_admin_access_key,
        ceph.s3_admin_secret_key,
        bucket_prefix=tag,
        uid_prefix=tag,
        quota_bytes=4 * MiB,
    )


def s3_client(account):
    return boto3.client(
        "s3",
        endpoint_url=account.endpoint,
        aws_access_key_id=account.access_key,
        aws_secret_access_key=account.secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def error_code(call) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call()
    return info.value.response["Error"]["Code"]


def test_users_own_buckets_are_isolated(rgw):
    alice, bob = rgw.ensure("alice"), rgw.ensure("bob")
    assert alice.bucket != bob.bucket and alice.access_key != bob.access_key
    a, b = s3_client(alice), s3_client(bob)
    a.put_object(Bucket=alice.bucket, Key="data.txt", Body=b"alice's")
    b.put_object(Bucket=bob.bucket, Key="data.txt", Body=b"bob's")
    assert a.get_object(Bucket=alice.bucket, Key="data.txt")["Body"].read() == b"alice's"

    assert error_code(lambda: a.list_objects_v2(Bucket=bob.bucket)) == "AccessDenied"
    assert error_code(lambda: a.get_object(Bucket=bob.bucket, Key="data.txt")) == "AccessDenied"
    assert error_code(lambda: a.put_object(Bucket=bob.bucket, Key="x", Body=b"x")) == "AccessDenied"
    assert error_code(lambda: a.delete_object(Bucket=bob.bucket, Key="data.txt")) == "AccessDenied"
    assert b.get_object(Bucket=bob.bucket, Key="data.txt")["Body"].read() == b"bob's"
    # no buckets beyond her own
    assert error_code(lambda: a.create_bucket(Bucket=alice.bucket + "-more")) == "TooManyBuckets"


def test_quota_and_usage(rgw):
    carol = rgw.ensure("carol")
    c = s3_client(carol)
    c.put_object(Bucket=carol.bucket, Key="small", Body=b"y" * MiB)
    assert (
        error_code(lambda: c.put_object(Bucket=carol.bucket, Key="big", Body=b"z" * (5 * MiB)))
        == "QuotaExceeded"
    )
    again = rgw.account("carol")
    assert again.objects == 1 and again.used_bytes >= MiB
    assert again.as_json()["quota_bytes"] == 4 * MiB and "secret_key" not in again.as_json()


def test_rotated_keys_stop_working(rgw):
    old = rgw.ensure("erin")
    s3_client(old).put_object(Bucket=old.bucket, Key="k", Body=b"v")
    new = rgw.rotate_keys("erin")
    assert new.access_key != old.access_key
    code = error_code(lambda: s3_client(old).get_object(Bucket=old.bucket, Key="k"))
    assert code in ("InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch")
    assert s3_client(new).get_object(Bucket=new.bucket, Key="k")["Body"].read() == b"v"
    assert rgw.ensure("erin").access_key == new.access_key  # ensure keeps the current key
    with pytest.raises(StorageError) as info:
        rgw.rotate_keys("never-seen")
    assert info.value.status == 404


def test_bucket_names_are_valid_and_distinct():
    names = [bucket_name("gpulab-", u) for u in ("alice", "a_b", "a-b", "A.B@x.org", "z" * 80)]
    assert len(set(names)) == len(names)
    for n in names:
        assert 3 <= len(n) <= 63 and n == n.lower() and "_" not in n and ".." not in n
