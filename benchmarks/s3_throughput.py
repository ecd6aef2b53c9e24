"""S3 throughput from inside a user's server vs raw boto3 with the admin keys.

Starts a real single-node Ceph (scripts/ceph) and a gpulab hub wired to its RGW,
spawns a user's server, and moves 256 MiB up and down (8 x 32 MiB objects) twice:
once from a kernel in the user's server with nothing but the injected environment
(``boto3.client("s3")``), once from this process with raw boto3 and the admin keys,
alternating rounds so both see the same machine. Run as root.

    .venv/bin/python benchmarks/s3_throughput.py [--rounds 2]

Last line: ``s3_ratio: <user MiB/s / admin MiB/s>`` (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the tests' hub harness (a real hub on free ports, kernels over websockets)
sys.path.insert(0, str(REPO / "tests"))

from hubfixture import Hub, free_port  # noqa: E402

WORKLOAD = """
import json, os, time, boto3
def workload(s3, bucket, objects=8, size=32 << 20):
    body = os.urandom(size)
    t = time.perf_counter()
    for i in range(objects):
        s3.put_object(Bucket=bucket, Key=f"bench/{i}", Body=body)
    up = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(objects):
        assert len(s3.get_object(Bucket=bucket, Key=f"bench/{i}")["Body"].read()) == size
    down = time.perf_counter() - t
    for i in range(objects):
        s3.delete_object(Bucket=bucket, Key=f"bench/{i}")
    mib = objects * size / 2**20
    return {"up": mib / up, "down": mib / down, "both": 2 * mib / (up + down)}
"""


def start_ceph(data: str, env: dict) -> dict:
    script = str(REPO / "scripts" / "ceph")
    subprocess.run([script, "start", data], env=env, check=True, timeout=300)
    out = subprocess.run(
        [script, "env", data], env=env, check=True, capture_output=True, text=True, timeout=60
    ).stdout
    values = {}
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        values[key] = shlex.split(value)[0]
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: user servers run as their own unix accounts")

    ceph_dir = tempfile.mkdtemp(prefix="gpulab-bench-ceph-")
    ceph_env = {**os.environ, "CEPH_MON_PORT": str(free_port()), "CEPH_RGW_PORT": str(free_port())}
    hub = None
    try:
        ceph = start_ceph(ceph_dir, ceph_env)
        hub = Hub(
            {
                "gpus": {"ids": ["0"]},
                "storage": {
                    "s3_endpoint": ceph["CEPH_RGW_ENDPOINT"],
                    "s3_admin_access_key": ceph["CEPH_RGW_ADMIN_ACCESS_KEY"],
                    "s3_admin_secret_key": ceph["CEPH_RGW_ADMIN_SECRET_KEY"],
                    "s3_quota": "2GiB",
                },
            }
        ).start()
        user = hub.create_user("bench")
        r = user.spawn(profile="cpu")
        if r.status_code not in (201, 202):
            raise SystemExit(f"spawn failed: {r.status_code} {r.text}")

        import boto3
        from botocore.config import Config

        namespace: dict = {}
        exec(WORKLOAD, namespace)  # the same workload code as the kernel runs
        admin = boto3.client(
            "s3",
            endpoint_url=ceph["CEPH_RGW_ENDPOINT"],
            aws_access_key_id=ceph["CEPH_RGW_ADMIN_ACCESS_KEY"],
            aws_secret_access_key=ceph["CEPH_RGW_ADMIN_SECRET_KEY"],
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )
        admin.create_bucket(Bucket="bench-admin")

        results: dict[str, list[dict]] = {"user": [], "admin": []}
        for i in range(args.rounds):
            out = user.run(
                WORKLOAD + "\nprint(json.dumps(workload(boto3.client('s3'), "
                "os.environ['GPULAB_S3_BUCKET'])))",
                timeout=600,
            )
            results["user"].append(json.loads(out.strip().splitlines()[-1]))
            results["admin"].append(namespace["workload"](admin, "bench-admin"))
            for who in ("user", "admin"):
                r = results[who][-1]
                print(
                    f"round {i + 1}: {who:5s} up {r['up']:.1f} MiB/s, down {r['down']:.1f} MiB/s",
                    flush=True,
                )
        med = {who: statistics.median(r["both"] for r in rs) for who, rs in results.items()}
        print(f"user server, injected credentials: {med['user']:.1f} MiB/s (256 MiB up + down)")
        print(f"raw boto3, admin keys:             {med['admin']:.1f} MiB/s (256 MiB up + down)")
        print(f"s3_ratio: {med['user'] / med['admin']:.3f}")
    finally:
        if hub is not None:
            hub.cleanup()
        subprocess.run(
            [str(REPO / "scripts" / "ceph"), "stop", ceph_dir], env=ceph_env, timeout=120
        )
        shutil.rmtree(ceph_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
