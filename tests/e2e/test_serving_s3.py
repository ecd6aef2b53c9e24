"""Model serving from the user's own S3 bucket, on the suite's real Ceph RGW: a model
uploaded there is served, and a new version uploaded later is found (see
test_serving.py for serving from the home).

A module of its own: the suite's parallel workers run everything on Ceph in one worker
(tests/conftest.py), and the other serving tests need none.
"""

from __future__ import annotations

from test_serving import deploy, predict, wait_available

from hubfixture import export_line, wait_for
from k8sfixture import s3_settings


def test_a_model_in_the_users_bucket_is_served_and_new_versions_found(ceph, make_hub, tmp_path):
    import boto3

    from gpulab.hub.storage.s3 import RgwAccounts

    prefix = "gls-"
    storage = {**s3_settings(ceph), "s3_prefix": prefix, "s3_quota": "64MiB"}
    hub = make_hub({"storage": storage}).start()
    fay = hub.create_user("sv-fay")
    account = RgwAccounts(
        ceph.s3_endpoint,
        ceph.s3_admin_access_key,
        ceph.s3_admin_secret_key,
        bucket_prefix=prefix,
        uid_prefix=prefix,
    ).ensure(fay.name)
    s3 = boto3.client(
        "s3",
        endpoint_url=account.endpoint,
        aws_access_key_id=account.access_key,
        aws_secret_access_key=account.secret_key,
        region_name="us-east-1",
    )

    def upload(version: int, a: float, b: float) -> None:
        """Export locally, then upload the version with its saved_model.pb last."""
        folder = tmp_path / str(version)
        export_line(folder, a, b)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == "saved_model.pb")
        for path in files:
            key = f"models/line/{version}/{path.relative_to(folder)}"
            s3.upload_file(str(path), account.bucket, key)

    upload(1, 0.5, 2.0)
    deploy(fay, {"name": "s3line", "base_path": f"s3://{account.bucket}/models/line"})
    wait_available(fay, "s3line")
    assert predict(fay, "s3line", {"instances": [2.0]}).json() == {"predictions": [3.0]}
    upload(2, 1.0, 0.0)
    wait_for(
        lambda: predict(fay, "s3line", {"instances": [2.0]}).json() == {"predictions": [2.0]},
        60,
        "version 2 from the bucket",
    )
    assert fay.session.delete(hub.api("/gpulab/models/s3line"), timeout=60).status_code == 204
