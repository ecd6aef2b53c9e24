"""gpulab from a notebook: ``import gpulab``.

Thin functions over the hub's API client (``gpulab.hub.client.GpulabClient``), which
finds the hub through the user server's own token (or ``GPULAB_URL`` / ``GPULAB_TOKEN``
elsewhere):

>>> import gpulab
>>> gpulab.gpus()["free"]
2
>>> gpulab.submit("job.yaml", follow=True)["state"]  # prints the log until the job ends
'succeeded'
>>> gpulab.deploy({"name": "line", "base_path": "models/line"})["state"]  # once it serves
'available'
>>> gpulab.predict("line", [1.0, 2.0])
{'predictions': [2.5, 3.0]}

Hub errors raise ``gpulab.ClientError`` with the hub's message. Every kernel of gpulab's
environment also has the ``%%gpulab_job`` and ``%gpulab_jobs`` magics: the IPython
extension ``gpulab.magics``.

Importing this package imports nothing else of gpulab: the client is loaded by the first
call, so every kernel can load the magics at its start for free.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpulab.hub.client import ClientError, GpulabClient

__all__ = [
    "ClientError",
    "GpulabClient",
    "cancel",
    "client",
    "deploy",
    "follow_job",
    "gpus",
    "jobs",
    "logs",
    "models",
    "predict",
    "submit",
    "undeploy",
    "wait",
]

_client: GpulabClient | None = None


def __getattr__(name: str) -> Any:
    """``gpulab.ClientError`` and ``gpulab.GpulabClient``, imported when first named."""
    if name in ("ClientError", "GpulabClient"):
        from gpulab.hub import client as api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def client() -> GpulabClient:
    """The hub's API client for this server's user (made once, then shared)."""
    global _client
    if _client is None:
        from gpulab.hub.client import GpulabClient

        _client = GpulabClient.from_environment()
    return _client


def gpus() -> dict:
    """The GPU pool as you may see it: ``total``, ``free``, each GPU and your limits."""
    return client().gpus()


# -- training jobs (docs/jobs.md) -----------------------------------------------------


def submit(spec: Mapping | str | os.PathLike, follow: bool = False) -> dict:
    """Submit a training job: its spec as a dict, or the path of a YAML or JSON file
    holding it. The job as the hub took it (``state`` queued, starting or running); with
    ``follow``, its first replica's log is printed as it grows, and the job is returned
    once it ended (an interrupt stops the printing; the job runs on)."""
    if isinstance(spec, Mapping):
        body = dict(spec)
    else:
        from gpulab.hub.client.specfile import load_spec

        body = load_spec(os.fspath(spec))
    job = client().submit_job(body)
    return follow_job(job["name"]) if follow else job


def jobs() -> list[dict]:
    """Your jobs, oldest first (a sweep's trials among them)."""
    return client().jobs()


def logs(name: str, replica: str | None = None, follow: bool = False) -> str | None:
    """A replica's log (default: the job's first, chief-0 or worker-0) as text. With
    ``follow``, the log is printed as it grows until the job ends, and nothing returned."""
    chunks = client().job_logs(name, replica, follow=follow)
    if not follow:
        return "".join(chunks)
    for text in chunks:
        print(text, end="", flush=True)
    return None


def wait(name: str, timeout: float | None = None) -> dict:
    """The job once it ended (succeeded, failed or cancelled); TimeoutError after
    ``timeout`` seconds, the job running on."""
    return client().wait_job(name, timeout=timeout)


def cancel(name: str) -> dict:
    """Stop every replica of the job and free its GPUs; a job that ended stays as it is."""
    return client().cancel_job(name)


def follow_job(name: str, say=print) -> dict:
    """Wait for the job to start, saying its state and place in the queue as they change,
    print its first replica's log as it grows, and return the job once it ended."""
    from gpulab.hub.client import JOB_FINISHED

    hub = client()
    job = hub.wait_job(
        name,
        on_change=lambda j: say(state_line(j)),
        interval=0.5,
        states=("running", *JOB_FINISHED),
    )
    ended_line = True
    for text in hub.job_logs(name, follow=True):
        print(text, end="", flush=True)
        ended_line = text.endswith("\n")
    if not ended_line:
        print()
    job = hub.job(name)
    if job["state"] not in JOB_FINISHED:  # the log ends a moment before the job is judged
        job = hub.wait_job(name, interval=0.2)
    return job


def state_line(job: dict) -> str:
    """``Job mnist: queued (#2 in the queue): waiting for 2 GPUs``."""
    where = f" (#{job['queue_position']} in the queue)" if job.get("queue_position") else ""
    said = job.get("message") or ""
    message = f": {said}" if said and said.lower() != job["state"] else ""
    return f"Job {job['name']}: {job['state']}{where}{message}"


# -- models (docs/serving.md) ---------------------------------------------------------


def deploy(spec: Mapping, wait: bool = True) -> dict:
    """Deploy a model: ``name``, ``base_path`` (numbered SavedModel version folders on
    your home, or ``s3://bucket/prefix``) and optionally ``versions``, ``labels``,
    ``replicas``, ``gpus``, ``access``, ``batching`` (true, or TF Serving's batching
    parameters: ``{"max_batch_size": 32, "batch_timeout_micros": 1000}``). With ``wait`` (the default) the model is returned
    once it serves; one that failed to start raises ClientError with the reason."""
    hub = client()
    model = hub.deploy_model(dict(spec))
    if not wait:
        return model
    model = hub.wait_model(model["name"])
    if model["state"] == "failed":
        from gpulab.hub.client import ClientError

        raise ClientError(f"model {model['name']} failed: {model.get('message') or ''}")
    return model


def predict(
    name: str, body_or_instances: Any, version: int | None = None, label: str | None = None
) -> dict:
    """Call your model as TF Serving's predict does: ``body_or_instances`` is the request
    body (``{"instances": ...}`` or ``{"inputs": ...}``) or the instances alone (a list,
    or anything with ``tolist()`` such as a NumPy array). The answer's JSON
    (``{"predictions": ...}`` for instances)."""
    if isinstance(body_or_instances, Mapping):
        body = dict(body_or_instances)
    else:
        instances = body_or_instances
        if hasattr(instances, "tolist"):
            instances = instances.tolist()
        body = {"instances": instances}
    return client().predict(name, body, version=version, label=label)


def models() -> list[dict]:
    """Your deployed models with their state, versions and replicas."""
    return client().models()


def undeploy(name: str) -> None:
    """Stop the model's servers and free what they hold; the base path stays."""
    client().undeploy_model(name)
