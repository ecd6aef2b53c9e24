"""The Python client for the gpulab hub API, used by the CLI and from notebooks.

>>> from gpulab.hub.client import GpulabClient
>>> GpulabClient.from_environment().gpus()["free"]

Inside a user server it finds the hub through ``JUPYTERHUB_API_URL`` and the
server's token; elsewhere through ``GPULAB_URL`` / ``GPULAB_TOKEN``, or, as root on
the hub machine, the settings file and the gpulab CLI token in the data root.
"""

from __future__ import annotations

import os
from pathlib import Path

import requests

from .settings import Settings, load_settings


class ClientError(Exception):
    """The hub answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


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
        url = self.api_url + path
        try:
            r = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise ClientError(f"cannot reach the hub at {self.api_url} (is it running?)") from None
        except requests.Timeout:
            raise ClientError(f"the hub at {self.api_url} did not answer in time") from None
        if r.status_code >= 400:
            try:
                message = r.json().get("message") or r.reason
            except ValueError:
                message = r.text[:200] or r.reason
            if r.status_code == 403 and "credentials" in message.lower():
                message += " Set GPULAB_TOKEN to an API token from the hub's Token page."
            raise ClientError(f"{r.status_code}: {message}", status=r.status_code)
        return r.json() if r.content else {}

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

    def _gpu(self, method: str, path: str, user, server, body=None):
        params = {k: v for k, v in (("user", user), ("server", server)) if v}
        return self.request(method, "/gpulab/gpu" + path, params=params or None, json=body)

    def gpu_status(self, user: str | None = None, server: str = "") -> dict:
        """What the server holds, the pool, and its last Return/Get GPU operation."""
        return self._gpu("GET", "", user, server)

    def return_gpu(
        self, user: str | None = None, server: str = "", interrupt=False, force=False
    ) -> dict:
        """Return the server's GPUs, keeping its kernels' variables; free on return."""
        body = {"interrupt": interrupt, "force": force}
        return self._gpu("POST", "/return", user, server, body)

    def get_gpu(
        self, gpus: int = 1, user: str | None = None, server: str = "", timeout=None
    ) -> dict:
        """Ask for GPUs for a running server; follow the operation with ``gpu_status``."""
        body = {"gpus": gpus, **({"timeout": timeout} if timeout is not None else {})}
        return self._gpu("POST", "/acquire", user, server, body)

    def cancel_get_gpu(self, user: str | None = None, server: str = "") -> dict:
        return self._gpu("DELETE", "/acquire", user, server)

    def whoami(self) -> dict:
        return self.request("GET", "/user")

    def users(self) -> list[dict]:
        """Every user with their servers (admins); just oneself otherwise."""
        me = self.whoami()
        if me.get("kind") == "service" or me.get("admin"):
            return self.request("GET", "/users", params={"state": "active"})
        return [self.request("GET", f"/users/{me['name']}")]
