"""The HTTP client for the gpulab hub API (``GpulabClient``), exported by
``gpulab.hub.client``: see there for how to use it."""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import requests

from ..settings import Settings, load_settings


class ClientError(Exception):
    """The hub answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


JOB_FINISHED = ("succeeded", "failed", "cancelled")
"""The states a job (or a sweep) ends in."""
MODEL_SETTLED = ("available", "failed")
"""The states a deploying model ends up in."""
ENVIRONMENT_SAVED = ("ready", "failed")
"""The states an environment snapshot being saved ends up in."""
RETURN_TIMEOUT = (30, 360)
"""Connecting, and then the hub's answer to a Return GPU: it waits up to 330 s for the
server to checkpoint its kernels (``gpulab.hub.gpuswitch``)."""


class GpulabClient:
    def __init__(self, api_url: str, token: str | None, timeout: float = 30):
        self.api_url = api_url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"token {token}"
        self.timeout = timeout

    @classmethod
    def from_environment(
        cls, url: str | None = None, token: str | None = None, settings: Settings | None = None
    ) -> GpulabClient:
        env = os.environ
        if url:
            api_url = url.rstrip("/") + "/hub/api"
        elif env.get("GPULAB_URL"):
            api_url = env["GPULAB_URL"].rstrip("/") + "/hub/api"
        elif env.get("JUPYTERHUB_API_URL"):
            api_url = env["JUPYTERHUB_API_URL"]
        else:
            settings = settings or load_settings()
            api_url = f"http://127.0.0.1:{settings.hub.port}/hub/api"
        token = token or env.get("GPULAB_TOKEN") or env.get("JUPYTERHUB_API_TOKEN")
        if not token:
            settings = settings or load_settings()
            token_file = Path(settings.data_path) / "cli-token"
            if os.access(token_file, os.R_OK):
                token = token_file.read_text().strip()
        return cls(api_url, token)

    def request(self, method: str, path: str, **kwargs) -> dict | list:
        r = self._send(method, path, **kwargs)
        return r.json() if r.content else {}

    def _send(self, method: str, path: str, **kwargs) -> requests.Response:
        """The hub's answer to a request; an error answer raises ClientError."""
        url = self.api_url + path
        kwargs.setdefault("timeout", self.timeout)
        try:
            r = self.session.request(method, url, **kwargs)
        except requests.ConnectionError:
            raise ClientError(f"cannot reach the hub at {self.api_url} (is it running?)") from None
        except requests.Timeout:
            raise ClientError(f"the hub at {self.api_url} did not answer in time") from None
        if r.status_code >= 400:
            try:
                data = r.json()
                message = data.get("message") or data.get("error") or r.reason
            except ValueError:
                message = r.text[:200] or r.reason
            if r.status_code == 403 and "credentials" in message.lower():
                message += " Set GPULAB_TOKEN to an API token from the hub's Token page."
            r.close()
            raise ClientError(f"{r.status_code}: {message}", status=r.status_code)
        return r

    def gpus(self, user: str | None = None) -> dict:
        return self.request("GET", "/gpulab/gpus", params={"user": user} if user else None)

    def events(self, user: str | None = None, limit: int = 100) -> list[dict]:
        params = {"limit": limit, **({"user": user} if user else {})}
        return self.request("GET", "/gpulab/events", params=params)["events"]

    def storage(self, user: str | None = None) -> dict:
        return self.request("GET", "/gpulab/storage", params={"user": user} if user else None)

    def rotate_s3_keys(self, user: str | None = None) -> dict:
        return self.request(
            "POST", "/gpulab/storage/s3/rotate-keys", params={"user": user} if user else None
        )

    def _volume(self, method: str, path: str, user: str | None, body: dict | None = None):
        params = {"user": user} if user else None
        return self.request(method, "/gpulab/storage/volume" + path, params=params, json=body)

    def resize_volume(self, size: str | int, user: str | None = None) -> dict:
        return self._volume("POST", "/resize", user, {"size": size})

    def snapshots(self, user: str | None = None) -> list[dict]:
        return self._volume("GET", "/snapshots", user)["snapshots"]

    def create_snapshot(self, name: str, user: str | None = None) -> dict:
        return self._volume("POST", "/snapshots", user, {"name": name})

    def rollback(self, name: str, user: str | None = None) -> dict:
        return self._volume("POST", f"/snapshots/{name}/rollback", user)

    def delete_snapshot(self, name: str, user: str | None = None) -> None:
        self._volume("DELETE", f"/snapshots/{name}", user)

    # -- Return GPU / Get GPU -----------------------------------------------------------

    def _gpu(self, method: str, path: str, user, server, body=None, **kwargs):
        params = {k: v for k, v in (("user", user), ("server", server)) if v}
        return self.request(
            method, "/gpulab/gpu" + path, params=params or None, json=body, **kwargs
        )

    def gpu_status(self, user: str | None = None, server: str = "") -> dict:
        """What the server holds, the pool, and its last Return/Get GPU operation."""
        return self._gpu("GET", "", user, server)

    def return_gpu(
        self, user: str | None = None, server: str = "", interrupt=False, force=False
    ) -> dict:
        """Return the server's GPUs, keeping its kernels' variables; free on return."""
        body = {"interrupt": interrupt, "force": force}
        return self._gpu("POST", "/return", user, server, body, timeout=RETURN_TIMEOUT)

    def get_gpu(
        self, gpus: int = 1, user: str | None = None, server: str = "", timeout=None
    ) -> dict:
        """Ask for GPUs for a running server; follow the operation with ``gpu_status``."""
        body = {"gpus": gpus, **({"timeout": timeout} if timeout is not None else {})}
        return self._gpu("POST", "/get", user, server, body)

    def cancel_get_gpu(self, user: str | None = None, server: str = "") -> dict:
        return self._gpu("DELETE", "/get", user, server)

    def checkpoints(self, user: str | None = None, server: str = "") -> list[dict]:
        """The checkpoints of the server's kernels on its home, newest first."""
        return self._gpu("GET", "/checkpoints", user, server)["checkpoints"]

    def restore_checkpoint(
        self, ident: str, notebook: str = "", user: str | None = None, server: str = ""
    ) -> dict:
        """Load a checkpoint into a notebook's kernel (the one it was taken from, by
        default); the server starts a kernel for it if none runs."""
        path = f"/checkpoints/{quote(ident, safe='')}/restore"
        return self._gpu("POST", path, user, server, {"notebook": notebook}, timeout=RETURN_TIMEOUT)

    def delete_checkpoint(self, ident: str, user: str | None = None, server: str = "") -> None:
        self._gpu("DELETE", f"/checkpoints/{quote(ident, safe='')}", user, server)

    def whoami(self) -> dict:
        return self.request("GET", "/user")

    def users(self) -> list[dict]:
        """Every user with their servers (admins); just oneself otherwise."""
        me = self.whoami()
        if me.get("kind") == "service" or me.get("admin"):
            return self.request("GET", "/users", params={"state": "active"})
        return [self.request("GET", f"/users/{me['name']}")]

    # -- training jobs ------------------------------------------------------------------

    def jobs(self, user: str | None = None, sweep: str | None = None) -> list[dict]:
        """One's jobs (admins: everyone's, or ``user``'s), oldest first; ``sweep``: its trials."""
        params = _params(user=user, sweep=sweep)
        return self.request("GET", "/gpulab/jobs", params=params)["jobs"]

    def submit_job(self, spec: dict, user: str | None = None) -> dict:
        """Submit a job spec (``name``, ``command`` / ``script`` / ``module``, ``replicas``,
        ...); the queued job. A spec the hub refuses raises ClientError naming the field."""
        return self.request("POST", "/gpulab/jobs", params=_params(user=user), json=spec)

    def job(self, name: str, user: str | None = None) -> dict:
        """The job: state, message, replicas, queue position, metrics, and its ``events``."""
        return self.request("GET", _job_path(name), params=_params(user=user))

    def job_logs(
        self,
        name: str,
        replica: str | None = None,
        user: str | None = None,
        follow: bool = False,
        offset: int = 0,
    ) -> Iterator[str]:
        """A replica's log (default: the job's first replica) as text, chunk by chunk.

        ``follow``: go on while the job runs, ending when it does. ``offset`` is in bytes
        of the log file, to resume where an earlier read stopped.
        """
        params = _params(replica=replica, user=user, follow=1 if follow else None, offset=offset)
        # following waits for the job as long as it runs: no read timeout then
        timeout = (self.timeout, None) if follow else self.timeout
        r = self._send("GET", _job_path(name, "/logs"), params=params, stream=True, timeout=timeout)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        received = offset
        try:
            for data in r.iter_content(chunk_size=None):
                received += len(data)
                text = decoder.decode(data)
                if text:
                    yield text
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
            raise ClientError(
                f"the hub stopped sending the log of {name} after {received} bytes "
                f"(resume with offset={received})"
            ) from None
        except requests.Timeout:
            raise ClientError(f"the hub at {self.api_url} did not answer in time") from None
        finally:
            r.close()

    def cancel_job(self, name: str, user: str | None = None) -> dict:
        """Stop every replica and free the job's GPUs; a job that ended stays as it is."""
        return self.request("POST", _job_path(name, "/cancel"), params=_params(user=user))

    def delete_job(self, name: str, user: str | None = None) -> None:
        """Cancel the job if it runs, then forget it (its logs stay on the home)."""
        self.request("DELETE", _job_path(name), params=_params(user=user))

    def wait_job(
        self,
        name: str,
        user: str | None = None,
        timeout: float | None = None,
        on_change: Callable[[dict], object] | None = None,
        interval: float = 1.0,
        states: tuple[str, ...] = JOB_FINISHED,
    ) -> dict:
        """Poll the job until it is in one of ``states`` (by default: until it ended).

        ``on_change(job)`` is called with the job whenever its state, message or place
        in the queue changed, e.g. ``on_change=lambda j: print(j["state"], j["message"])``.
        More than ``timeout`` seconds raises TimeoutError; the job runs on.
        """
        return _wait(
            lambda: self.job(name, user), f"job {name}", timeout, on_change, interval, states
        )

    # -- sweeps -------------------------------------------------------------------------

    def sweeps(self, user: str | None = None) -> list[dict]:
        return self.request("GET", "/gpulab/sweeps", params=_params(user=user))["sweeps"]

    def submit_sweep(self, spec: dict, user: str | None = None) -> dict:
        """Submit a sweep: ``name``, ``job`` (a job spec without its name), ``parameters``,
        ``algorithm`` (grid / random), ``trials``, ``max_parallel``, ``objective``."""
        return self.request("POST", "/gpulab/sweeps", params=_params(user=user), json=spec)

    def sweep(self, name: str, user: str | None = None) -> dict:
        """The sweep with its trials, best first by the objective, and its ``best`` trial."""
        return self.request("GET", _sweep_path(name), params=_params(user=user))

    def cancel_sweep(self, name: str, user: str | None = None) -> dict:
        return self.request("POST", _sweep_path(name, "/cancel"), params=_params(user=user))

    def delete_sweep(self, name: str, user: str | None = None) -> None:
        self.request("DELETE", _sweep_path(name), params=_params(user=user))

    def wait_sweep(
        self,
        name: str,
        user: str | None = None,
        timeout: float | None = None,
        on_change: Callable[[dict], object] | None = None,
        interval: float = 2.0,
    ) -> dict:
        """Poll the sweep until it ended; ``on_change(sweep)`` as for ``wait_job``."""
        return _wait(lambda: self.sweep(name, user), f"sweep {name}", timeout, on_change, interval)

    # -- environment snapshots ------------------------------------------------------------

    def environments(self, user: str | None = None) -> list[dict]:
        """One's snapshots and those shared with one's groups (admins: everyone's, or
        ``user``'s and those shared with ``user``'s groups)."""
        params = _params(user=user)
        return self.request("GET", "/gpulab/environments", params=params)["environments"]

    def save_environment(
        self,
        name: str,
        description: str = "",
        groups: Iterable[str] = (),
        user: str | None = None,
    ) -> dict:
        """Start saving one's own packages (what ``pip install --user`` put over the base, or
        over the snapshot one's server started from) as snapshot ``name``, shared with
        ``groups`` of one's own; the snapshot, ``saving``: follow it with ``wait_environment``."""
        body = {"name": name, "description": description, "groups": _names(groups)}
        return self.request("POST", "/gpulab/environments", params=_params(user=user), json=body)

    def environment(self, name: str, user: str | None = None) -> dict:
        """One's snapshot: state, message, image and digest, and the packages it adds."""
        return self.request("GET", _environment_path(name), params=_params(user=user))

    def share_environment(self, name: str, groups: Iterable[str], user: str | None = None) -> dict:
        """Share the snapshot with ``groups`` (of one's own) in place of those it had; no
        groups: with nobody. Their members start servers from it as ``owner/name``."""
        return self.request(
            "PATCH",
            _environment_path(name),
            params=_params(user=user),
            json={"groups": _names(groups)},
        )

    def delete_environment(self, name: str, user: str | None = None) -> None:
        """Delete the snapshot and its image (a save under way stops)."""
        self.request("DELETE", _environment_path(name), params=_params(user=user))

    def wait_environment(
        self,
        name: str,
        user: str | None = None,
        on_change: Callable[[dict], object] | None = None,
        timeout: float | None = None,
        interval: float = 0.5,
    ) -> dict:
        """Poll until the snapshot is saved (``ready``) or its save failed. ``on_change(env)``
        is called whenever its state or message changed; the message tells how far the save
        is ("Packing your packages: 12.0 MiB", "Pushing 12.0 MiB to the registry").
        More than ``timeout`` seconds raises TimeoutError; the save goes on."""
        return _wait(
            lambda: self.environment(name, user),
            f"environment {name}",
            timeout,
            on_change,
            interval,
            ENVIRONMENT_SAVED,
        )

    # -- models ---------------------------------------------------------------------------

    def models(self, user: str | None = None) -> list[dict]:
        return self.request("GET", "/gpulab/models", params=_params(user=user))["models"]

    def deploy_model(self, spec: dict, user: str | None = None) -> dict:
        """Deploy: ``name``, ``base_path`` (numbered SavedModel version folders on the
        home, or ``s3://bucket/prefix``), and optionally ``versions`` (latest / all / a
        list), ``latest``, ``labels``, ``replicas``, ``gpus``, ``access``, ``batching``
        (true, or TF Serving's batching parameters)."""
        return self.request("POST", "/gpulab/models", params=_params(user=user), json=spec)

    def model(self, name: str, user: str | None = None) -> dict:
        """State, versions, replicas, endpoints and (for its owner) the model's token."""
        return self.request("GET", _model_path(name), params=_params(user=user))

    def update_model(self, name: str, changes: dict, user: str | None = None) -> dict:
        """Change ``versions``, ``latest``, ``labels``, ``replicas`` or ``access``."""
        return self.request("PATCH", _model_path(name), params=_params(user=user), json=changes)

    def undeploy_model(self, name: str, user: str | None = None) -> None:
        self.request("DELETE", _model_path(name), params=_params(user=user))

    def model_logs(self, name: str, replica: int = 0, user: str | None = None) -> str:
        r = self._send(
            "GET", _model_path(name, "/logs"), params=_params(replica=replica, user=user)
        )
        return r.content.decode(errors="replace")

    def wait_model(
        self,
        name: str,
        user: str | None = None,
        timeout: float | None = None,
        on_change: Callable[[dict], object] | None = None,
        interval: float = 0.5,
    ) -> dict:
        """Poll until the model serves (or failed); ``on_change`` as for ``wait_job``."""
        return _wait(
            lambda: self.model(name, user),
            f"model {name}",
            timeout,
            on_change,
            interval,
            MODEL_SETTLED,
        )

    def predict(
        self,
        name: str,
        request: dict,
        version: int | None = None,
        label: str | None = None,
        owner: str | None = None,
    ) -> dict:
        """TF Serving's predict: ``request`` is its JSON body (``instances`` or
        ``inputs``); the answer is its JSON (``predictions`` or ``outputs``). ``owner``:
        call another user's model shared with you."""
        which = f"/versions/{version}" if version is not None else ""
        which = f"/labels/{quote(label, safe='')}" if label else which
        if owner:
            path = f"/gpulab/serving/{quote(owner, safe='')}/v1/models/{quote(name, safe='')}"
        else:
            path = _model_path(name)
        return self.request("POST", f"{path}{which}:predict", json=request)


def _params(**values) -> dict | None:
    """Query parameters, leaving out those not given."""
    given = {k: v for k, v in values.items() if v is not None and v != ""}
    return given or None


def _job_path(name: str, rest: str = "") -> str:
    return f"/gpulab/jobs/{quote(name, safe='')}{rest}"


def _model_path(name: str, rest: str = "") -> str:
    return f"/gpulab/models/{quote(name, safe='')}{rest}"


def _names(groups: Iterable[str]) -> list[str]:
    """Group names as a list; one name alone is one group, not its letters."""
    return [groups] if isinstance(groups, str) else list(groups)


def _environment_path(name: str) -> str:
    return f"/gpulab/environments/{quote(name, safe='')}"


def _sweep_path(name: str, rest: str = "") -> str:
    return f"/gpulab/sweeps/{quote(name, safe='')}{rest}"


def _wait(get, what, timeout, on_change, interval, states=JOB_FINISHED) -> dict:
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = None
    while True:
        model = get()
        now = _progress(model)
        if on_change is not None and now != seen:
            on_change(model)
        seen = now
        if model["state"] in states:
            return model
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"{what} is still {model['state']} after {timeout:g}s")
        wait = interval if deadline is None else min(interval, deadline - time.monotonic())
        time.sleep(max(wait, 0.05))


def _progress(model: dict) -> tuple:
    """What ``on_change`` is told about: the state, the message, the queue, the trials."""
    trials = tuple((t.get("name"), t.get("state")) for t in model.get("trials") or ())
    listed = model.get("replica_status") or model.get("replicas")  # a model's, or a job's
    replicas = tuple(
        (r.get("name", r.get("index")), r.get("state"), r.get("message"))
        for r in (listed if isinstance(listed, list) else ())
    )
    return model.get("state"), model.get("message"), model.get("queue_position"), trials, replicas
