"""Training jobs on the kubernetes backend: each replica a pod, each job a headless Service.

On the fake cluster (``k8sfixture``) the pods run as local processes; replicas find each
other by the DNS names of the job's Service, which the fake's cluster DNS resolves
inside the pods (to 127.0.0.1, where every pod listens, each on a port of its own).
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
import requests
from test_jobs import TORCH_ALLREDUCE, job, logs, submit, wait_job

from gpulab.spawner import objects, workload_objects
from hubfixture import wait_for
from k8sfixture import GPU_TOLERATION, NAMESPACE, NODE, kube_get, kube_post, pods

pytestmark = pytest.mark.timeout(240)

GATED = textwrap.dedent(
    """
    import os, socket, sys, time
    print("master", os.environ.get("MASTER_ADDR"), "resolves to",
          socket.gethostbyname(os.environ["MASTER_ADDR"]), flush=True)
    while not os.path.exists("gate"):  # the test looks at the cluster meanwhile
        time.sleep(0.1)
    exec(open("allreduce.py").read())
    print("gpulab-metric: loss=0.25")
    with open(os.environ["GPULAB_METRICS_FILE"], "w") as f:
        f.write('{"accuracy": 0.75}')
    """
)


@pytest.fixture
def hub(k8s):
    return k8s


def home(hub) -> Path:
    return Path(hub.settings["kubernetes"]["home_mount"])


def with_home_claim(hub, kube, name: str):
    """A user with the home claim the first start of their server would have made."""
    user = hub.create_user(name)
    claim = objects.home_pvc(
        f"home-{name}", NAMESPACE, 2**30, "ceph-rbd", {}, objects.owner_annotations(name, "")
    )
    kube_post(kube, f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims", claim)
    return user


def job_pods(kube, job_id: int) -> list[dict]:
    group = f"job-{job_id}"
    return [
        p
        for p in pods(kube)
        if p["metadata"].get("labels", {}).get(workload_objects.LABEL_GROUP) == group
    ]


def exists(kube, path: str) -> bool:
    return requests.get(kube.url + path, timeout=10).status_code == 200


def test_a_pytorch_job_runs_as_pods_that_find_each_other_by_name(hub, kube):
    kai = with_home_claim(hub, kube, "kai")
    work = home(hub) / "kai-ddp"
    work.mkdir()
    (work / "allreduce.py").write_text(TORCH_ALLREDUCE)
    (work / "gated.py").write_text(GATED)
    work.chmod(0o777)
    submitted = submit(kai, {"name": "kddp", "framework": "pytorch", "script": "gated.py",
                             "workdir": "kai-ddp", "replicas": {"worker": {"count": 2, "gpus": 1}}})  # fmt: skip
    job_id = submitted["id"]
    service = f"gpulab-job-{job_id}"
    master = f"worker-0.{service}.{NAMESPACE}.svc.cluster.local"
    try:
        running = wait_for(
            lambda: (
                all("resolves to" in logs(kai, "kddp", f"worker-{i}") for i in range(2))
                and job(kai, "kddp")
            ),
            90,
            "both replicas to run",
        )
    except TimeoutError:
        seen = job(kai, "kddp")
        raise AssertionError(
            f"{seen['state']}: {seen['message']}; logs: "
            f"{[logs(kai, 'kddp', f'worker-{i}') for i in (0, 1)]}"
        ) from None
    assert running["state"] == "running"
    assert {r["address"].rpartition(":")[0] for r in running["replicas"]} == {
        f"worker-{i}.{service}.{NAMESPACE}.svc.cluster.local" for i in range(2)
    }
    assert f"master {master} resolves to 127.0.0.1" in logs(kai, "kddp", "worker-1")
    # while it runs: a pod per replica with its GPU on the ledger's node, in the Service
    svc = kube_get(kube, f"/api/v1/namespaces/{NAMESPACE}/services/{service}")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    live = job_pods(kube, job_id)
    assert sorted(p["spec"]["hostname"] for p in live) == ["worker-0", "worker-1"]
    for pod in live:
        assert pod["spec"]["subdomain"] == service
        (container,) = pod["spec"]["containers"]
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
        assert pod["spec"]["nodeSelector"] == {"kubernetes.io/hostname": NODE}
        assert GPU_TOLERATION in pod["spec"]["tolerations"]
        assert container["envFrom"] == [{"secretRef": {"name": service}}]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MASTER_ADDR"] == master and "CUDA_VISIBLE_DEVICES" not in env
        assert "AWS_SECRET_ACCESS_KEY" not in env  # the S3 keys are in the job's Secret
        assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "home-kai"}
    secret = kube_get(kube, f"/api/v1/namespaces/{NAMESPACE}/secrets/{service}")
    assert "AWS_SECRET_ACCESS_KEY" in secret["data"] and "MASTER_ADDR" not in secret["data"]
    assert secret["metadata"]["ownerReferences"][0]["name"] == service
    assert hub.gpus()["free"] == 0

    (work / "gate").write_text("")
    followed = logs(kai, "kddp", "worker-1", follow=True)  # until the job ends
    assert "rank 1 of 2 local 0 sum 3.0" in followed, followed
    done = wait_job(kai, "kddp")
    assert done["state"] == "succeeded", done["message"]
    for rank in range(2):
        assert f"rank {rank} of 2 local 0 sum 3.0" in logs(kai, "kddp", f"worker-{rank}")
    # metrics from the log line and from the metrics file the pod handed back
    assert done["metrics"] == {"loss": 0.25, "accuracy": 0.75}
    # the log is also on the home; the handed-back file's line is not in either
    on_home = (home(hub) / f".gpulab/jobs/{job_id}-kddp/worker-0.log").read_text()
    assert "rank 0 of 2" in on_home and "==> gpulab: file" not in on_home
    assert "==> gpulab: file" not in logs(kai, "kddp", "worker-0")
    # finished: no pod, Service or Secret left, every GPU free
    assert job_pods(kube, job_id) == []
    assert not exists(kube, f"/api/v1/namespaces/{NAMESPACE}/services/{service}")
    assert not exists(kube, f"/api/v1/namespaces/{NAMESPACE}/secrets/{service}")
    assert hub.gpus()["free"] == 2


def test_restarts_are_new_pods_failures_say_why_and_cancel_deletes_every_pod(hub, kube):
    lee = with_home_claim(hub, kube, "lee")
    flaky = (
        'if [ -e flaky-once ]; then echo second try; else touch flaky-once; echo "killed"; '
        "exit 137; fi"
    )
    folder = home(hub) / "lee-work"
    folder.mkdir()
    folder.chmod(0o777)
    submit(lee, {"name": "kflaky", "command": ["sh", "-c", flaky], "workdir": "lee-work",
                 "replicas": {"worker": {"count": 1, "gpus": 1,
                                         "restart_policy": "ExitCode"}}})  # fmt: skip
    submit(lee, {"name": "kfail", "command": ["sh", "-c", "echo 'bad config: lr' >&2; exit 1"],
                 "replicas": {"worker": {"count": 1, "restart_policy": "ExitCode"}}})  # fmt: skip
    flaky_done = wait_job(lee, "kflaky")
    assert flaky_done["state"] == "succeeded", flaky_done["message"]
    assert flaky_done["replicas"][0]["restarts"] == 1
    text = logs(lee, "kflaky", "worker-0")
    assert text.count("==> gpulab: worker-0 of job kflaky, attempt") == 2
    assert "killed" in text and "second try" in text
    failed = wait_job(lee, "kfail")
    assert failed["state"] == "failed"
    assert failed["message"] == "Failed: worker-0 exited with code 1: bad config: lr"

    long = submit(lee, {"name": "klong", "command": ["sleep", "600"],
                        "replicas": {"worker": {"count": 2, "gpus": 1}}})  # fmt: skip
    wait_for(
        lambda: sum(
            p["status"].get("phase") == "Running" for p in job_pods(kube, long["id"])
        ) == 2,
        60,
        "both pods of klong to run",
    )  # fmt: skip
    assert hub.gpus()["free"] == 0
    r = lee.session.post(hub.api("/gpulab/jobs/klong/cancel"), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "cancelled"
    # cancel returns once the pods are gone: the GPUs are free, nothing is left
    assert job_pods(kube, long["id"]) == []
    assert hub.gpus()["free"] == 2
    assert not exists(kube, f"/api/v1/namespaces/{NAMESPACE}/services/gpulab-job-{long['id']}")
    # the pod's shell passed the TERM on, and its log says the replica was stopped
    assert (
        logs(lee, "klong", "worker-1")
        .rstrip()
        .endswith(
            "==> gpulab: stopped by the hub (SIGTERM; exit code 143): its status at the hub says why"
        )
    )


def test_a_job_of_a_user_without_a_home_claim_fails_saying_so(hub, kube):
    mo = hub.create_user("kmo")
    submit(mo, {"name": "knohome", "command": ["true"], "replicas": {"worker": {"count": 1}}})
    done = wait_job(mo, "knohome")
    assert done["state"] == "failed"
    assert "kmo has no home volume in the cluster yet" in done["message"]
    assert hub.gpus()["free"] == 2


def test_a_hub_restart_takes_the_jobs_pods_over(hub, kube):
    ned = with_home_claim(hub, kube, "kned")
    quick = "sleep 3; echo finished; exit 3"  # ends while the hub is down
    submit(ned, {"name": "kends", "command": ["sh", "-c", quick]})
    long = submit(ned, {"name": "klong", "command": ["sh", "-c", "echo started; sleep 300"],
                        "replicas": {"worker": {"gpus": 1}}})  # fmt: skip
    wait_for(lambda: "started" in logs(ned, "klong", "worker-0"), 60, "klong to run")
    (before,) = [p["metadata"]["name"] for p in job_pods(kube, long["id"])]
    hub.kill()
    time.sleep(4)
    hub.start()
    ended = wait_job(ned, "kends", timeout=60)
    assert ended["state"] == "failed", ended
    assert ended["message"] == "Failed: worker-0 exited with code 3: finished"
    assert logs(ned, "kends", "worker-0").count("finished") == 1  # copied again, once
    taken = job(ned, "klong")
    assert taken["state"] == "running"
    assert any("Taken over after a hub restart" in e["message"] for e in taken["events"])
    assert [p["metadata"]["name"] for p in job_pods(kube, long["id"])] == [before]
    assert list(hub.holders().values()) == ["kned"]
    assert logs(ned, "klong", "worker-0").count("started") == 1
    r = ned.session.post(hub.api("/gpulab/jobs/klong/cancel"), timeout=60)
    assert r.json()["state"] == "cancelled"
    assert job_pods(kube, long["id"]) == [] and hub.gpus()["free"] == 2


def test_a_jobs_package_is_installed_by_a_pod_of_its_own_first(hub, kube):
    from hubfixture import tiny_wheel

    pat = with_home_claim(hub, kube, "kpat")
    dist = home(hub) / "kpat-dist"
    dist.mkdir()
    (dist / "gpulabprobe-1.0-py3-none-any.whl").write_bytes(tiny_wheel())
    spec = {
        "name": "kpkg",
        "package": "kpat-dist/gpulabprobe-1.0-py3-none-any.whl",
        "command": ["python", "-c", "import gpulabprobe; print('value', gpulabprobe.VALUE)"],
    }
    done = wait_job(pat, submit(pat, spec)["name"])
    assert done["state"] == "succeeded", (done["message"], logs(pat, "kpkg", "install"))
    assert "Successfully installed gpulabprobe" in logs(pat, "kpkg", "install")
    assert "value 42" in logs(pat, "kpkg", "worker-0")
    site = home(hub) / f".gpulab/jobs/{done['id']}-kpkg/site-packages/gpulabprobe"
    assert (site / "__init__.py").exists()
    assert job_pods(kube, done["id"]) == []


def test_a_replica_whose_pod_cannot_be_scheduled_fails_the_job_with_the_reason(hub, kube):
    # something outside gpulab holds both GPUs of the node; the ledger does not know
    outside = {"metadata": {"name": "outside-trainer"}, "spec": {"containers": [
        {"name": "train", "image": "trainer:1", "resources": {"limits": {"nvidia.com/gpu": "2"}}}
    ]}}  # fmt: skip
    kube_post(kube, f"/api/v1/namespaces/{NAMESPACE}/pods", outside)
    wait_for(
        lambda: kube_get(kube, f"/api/v1/namespaces/{NAMESPACE}/pods/outside-trainer")["spec"].get(
            "nodeName"
        ),
        30,
        "the outside pod to be scheduled",
    )
    rae = with_home_claim(hub, kube, "krae")
    submitted = submit(rae, {"name": "kstuck", "command": ["true"],
                             "replicas": {"worker": {"gpus": 1}}})  # fmt: skip
    done = wait_job(rae, "kstuck", timeout=60)
    assert done["state"] == "failed"
    assert done["message"].startswith("Failed: worker-0 could not start: not scheduled: ")
    assert "Insufficient nvidia.com/gpu" in done["message"]
    # nothing left behind
    assert job_pods(kube, submitted["id"]) == [] and hub.gpus()["free"] == 2


EVENTS_WRITER = textwrap.dedent(
    """
    import os, time
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    print("reader in the command's environment:", "GPULAB_METRICS_READER" in os.environ)
    writer = EventFileWriter("runs/eval")  # as PyTorch's SummaryWriter writes them
    for step, value in ((1, 0.5), (2, 0.25)):
        value = summary_pb2.Summary.Value(tag="loss", simple_value=value)
        event = event_pb2.Event(step=step, wall_time=time.time())
        event.summary.value.append(value)
        writer.add_event(event)
    writer.close()
    print("gpulab-metric: seen=1")
    """
)


def test_a_pods_tensorboard_scalars_come_back_as_the_jobs_metrics(hub, kube):
    """The pod's shell reads the event files after the command, as the pod's user, into
    the metrics file it hands back on its log."""
    uma = with_home_claim(hub, kube, "kuma")
    work = home(hub) / "kuma-tb"
    work.mkdir()
    (work / "events.py").write_text(EVENTS_WRITER)
    work.chmod(0o777)
    spec = {"name": "ktb", "script": "events.py", "workdir": "kuma-tb", "metrics": ["loss"],
            "metrics_events": "runs", "replicas": {"worker": {"count": 1}}}  # fmt: skip
    done = wait_job(uma, submit(uma, spec)["name"])
    text = logs(uma, "ktb", "worker-0")
    assert done["state"] == "succeeded", (done["message"], text)
    assert done["metrics"] == {"loss": 0.25, "seen": 1.0}
    assert "reader in the command's environment: False" in text
    assert (
        "==> gpulab: TensorBoard metrics: read loss (eval/loss) at step 2 from 1 event file "
        "under runs"
    ) in text, text
    assert job_pods(kube, done["id"]) == []
