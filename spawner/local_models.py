"""The local backend's model replicas: model server processes of the owner's account,
through the workload runner, listening on unix sockets only the owner can enter."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpulab.hub.inventory import visible_devices_env
from gpulab.hub.ledger import utcnow
from gpulab.hub.workloads.model_spec import (
    ModelError,
    ModelSpec,
    batching_config,
    monitoring_config,
)
from gpulab.hub.workloads.model_store import Deployment
from gpulab.hub.workloads.replica_http import (
    MAX_SOCKET_PATH,
    unix_address,
)
from gpulab.hub.workloads.runner import HomeRunner, Launch, last_line

if TYPE_CHECKING:
    from gpulab.hub.workloads.models import ModelManager

log = logging.getLogger(__name__)


@dataclass
class _Live:
    """What the hub knows of one running replica, between status polls."""

    rest: tuple[str, int]
    """The (host, port) the hub calls its REST API at (a ``unix_address``)."""
    ready: bool = False
    started: object = None
    task: asyncio.Task | None = None


class LocalModels:
    """Replicas as model server processes through the workload runner: as the owner's
    account, restarted when they exit; the config on the home. A replica listens on unix
    sockets (REST and gRPC) in a folder only its owner can enter (``listen_dir``), never
    on a loopback port another account could bind first or call."""

    def __init__(self, manager: ModelManager, runner: HomeRunner, python: str = "python"):
        self.manager = manager
        self.runner = runner
        self.python = python
        self.settings = manager.settings
        self._live: dict[int, dict[int, _Live]] = {}
        self._dirs: dict[str, tuple[str, int]] = {}

    async def check(self, user: str, spec: ModelSpec) -> None:
        try:
            folder, _ = await asyncio.to_thread(self._listen_dir, user)
        except OSError as e:
            raise ModelError(
                500, f"cannot make the folder of {user}'s model sockets: {e}"
            ) from None
        longest = len(self._socket(folder, spec.name, spec.replicas - 1, "rest"))
        if longest > MAX_SOCKET_PATH:
            raise ModelError(
                400,
                f"name: too long for its replicas' sockets in {folder} (a socket path holds "
                f"{MAX_SOCKET_PATH} characters); use at most "
                f"{len(spec.name) - longest + MAX_SOCKET_PATH} characters",
            )
        if not spec.on_s3:
            await asyncio.to_thread(self._check_base_path, user, spec)

    def _listen_dir(self, user: str) -> tuple[str, int]:
        """(the folder of the user's replicas' sockets, the uid that must listen there),
        made or tightened again now."""
        folder, uid = self.runner.listen_dir(user)
        self._dirs[user] = (str(folder), uid)
        return self._dirs[user]

    @staticmethod
    def _socket(folder: str, name: str, index: int, api: str) -> str:
        return f"{folder}/{name}-{index}.{api}"

    def _sockets(self, model: Deployment, index: int) -> tuple[str, str, int]:
        """(REST socket, gRPC socket, the owner's uid) of a replica."""
        folder, uid = self._dirs.get(model.user) or self._listen_dir(model.user)
        rest, grpc = (self._socket(folder, model.name, index, api) for api in ("rest", "grpc"))
        return rest, grpc, uid

    def _check_base_path(self, user: str, spec: ModelSpec) -> None:
        """Refuse a base path that holds no SavedModel version the policy would serve."""
        shown = f"~/{spec.base_path}"
        try:
            names = self.runner.list_dir(user, spec.base_path)
        except FileNotFoundError:
            raise ModelError(400, f"base_path: {shown} is not a folder in your home") from None
        numbers = sorted(int(n) for n in names if n.isdigit())
        if not numbers:
            raise ModelError(
                400,
                f"base_path: {shown} holds no numbered version folder (TF Serving's layout: "
                f"{shown}/1/saved_model.pb)",
            )
        served = spec.aspired(numbers)
        if spec.policy == "specific":
            missing = sorted(set(spec.versions) - set(numbers))
            if missing:
                raise ModelError(
                    400,
                    f"versions: {shown} has no version {', '.join(map(str, missing))} (found "
                    f"{', '.join(map(str, numbers))})",
                )
        for version in served:
            if not self.runner.is_file(user, f"{spec.base_path}/{version}/saved_model.pb"):
                raise ModelError(
                    400,
                    f"base_path: {shown}/{version} is not a SavedModel (it has no saved_model.pb)",
                )
        for label, version in spec.labels.items():
            if version not in served:
                raise ModelError(
                    400,
                    f"labels.{label}: version {version} is not among the versions served "
                    f"({', '.join(map(str, served))})",
                )

    async def start(self, model: Deployment) -> None:
        await self._write_config(model, model.spec)
        for r in model.replicas:
            self._start_replica(model, r["index"])

    async def apply(self, model: Deployment, removed: list[dict], added: list[dict]) -> None:
        """The servers re-read the new config within ``serving.poll``."""
        await self._write_config(model, model.spec)
        for r in removed:
            await self._stop_replica(model, r["index"])
        for r in added:
            self._start_replica(model, r["index"])

    async def stop(self, model: Deployment) -> None:
        indices = set(self._live.get(model.id, {})) | {r["index"] for r in model.replicas}
        for index in sorted(indices):
            await self._stop_replica(model, index)
        self._live.pop(model.id, None)

    async def resume(self, model: Deployment) -> None:
        for r in model.replicas:
            adopted = None
            if r.get("pid"):  # still running, or its end is seen at once and it restarts
                adopted = self.runner.adopt(
                    model.user, model.log_path(r["index"]), r["pid"], r.get("pid_started")
                )
            self._start_replica(model, r["index"], adopted)

    def endpoints(self, model: Deployment) -> tuple[list, list]:
        live = self._live.get(model.id)
        if live is None:  # not taken over yet after a hub restart: its servers run on
            return list(self.replica_endpoints(model).values()), []
        ready = [live[i].rest for i in sorted(live) if live[i].ready]
        others = [live[i].rest for i in sorted(live) if not live[i].ready]
        return ready, others

    def replica_endpoints(self, model: Deployment) -> dict[int, tuple[str, int]]:
        """The REST address of each replica whose server runs (or may), by index."""
        live = self._live.get(model.id)
        if live is None:  # not taken over yet after a hub restart: its servers run on
            running = [r["index"] for r in model.replicas if r.get("pid")]
            return {i: self._rest_address(model, i) for i in running}
        return {i: live[i].rest for i in sorted(live)}

    def _rest_address(self, model: Deployment, index: int) -> tuple[str, int]:
        rest, _, uid = self._sockets(model, index)
        return unix_address(rest, uid)

    async def read_log(self, model: Deployment, index: int, offset: int) -> bytes:
        return await asyncio.to_thread(
            self.runner.read_log, model.user, model.log_path(index), offset
        )

    # -- one replica -------------------------------------------------------------------

    def _start_replica(self, model: Deployment, index: int, adopted=None) -> None:
        self._listen_dir(model.user)  # the owner's uid as it is now, not as cached
        rest, grpc, uid = self._sockets(model, index)
        self._show_sockets(model.id, index, rest, grpc)
        # an adopted process is known at once: a stop before the task's first step ends it
        live = _Live(rest=unix_address(rest, uid), started=adopted)
        self._live.setdefault(model.id, {})[index] = live
        live.task = asyncio.ensure_future(self._keep_running(model.id, index, live, adopted))

    def _show_sockets(self, model_id: int, index: int, rest: str, grpc: str) -> None:
        """Record a replica's sockets, for its owner to call (``replica_status``)."""
        current = self.manager.store.get_by_id(model_id)
        if current is None:
            return
        shown = {"rest_socket": f"unix:{rest}", "grpc_socket": f"unix:{grpc}"}
        replicas = [dict(r, **shown) if r["index"] == index else r for r in current.replicas]
        if replicas != current.replicas:
            self.manager.store.update(model_id, replicas=replicas)

    async def _stop_replica(self, model: Deployment, index: int) -> None:
        grace = self.settings.jobs.stop_grace_seconds
        live = self._live.get(model.id, {}).pop(index, None)
        stopped = None
        if live is not None:
            if live.task is not None:
                live.task.cancel()
                await asyncio.gather(live.task, return_exceptions=True)
            if live.started is not None:
                await self.runner.stop(live.started, grace)
                stopped = live.started.pid
        # and the process its record names, should no task know it (not taken over after a
        # hub restart): an undeployed replica's server must not run on
        current = self.manager.store.get_by_id(model.id) or model
        record = next((r for r in current.replicas if r["index"] == index), None)
        if record is not None and record.get("pid") and record["pid"] != stopped:
            log_path = model.log_path(index)
            recorded = self.runner.adopt(
                model.user, log_path, record["pid"], record.get("pid_started")
            )
            await self.runner.stop(recorded, grace)

    async def _keep_running(self, model_id: int, index: int, live: _Live, adopted) -> None:
        """Run one replica for as long as the model is deployed: start it, follow its
        status, and start it again when it exits."""
        manager = self.manager
        restarts = 0
        while True:
            model = manager.store.get_by_id(model_id)
            if model is None:
                return
            record = next((r for r in model.replicas if r["index"] == index), None)
            if record is None:
                return
            if adopted is not None:
                live.started, adopted = adopted, None
            else:
                try:
                    live.started = await self._launch(model, record, restarts)
                except OSError as e:
                    manager.set_replica(model_id, index, state="failed", message=str(e))
                    return
            began = time.monotonic()
            waiter = asyncio.ensure_future(live.started.wait())
            try:
                await self._follow(model_id, index, live, waiter, began)
            finally:
                if not waiter.done():
                    waiter.cancel()
            returncode = waiter.result() if not waiter.cancelled() else -9
            live.ready = False
            if time.monotonic() - began > 60:
                restarts = 0  # it ran a good while: start the backoff afresh
            restarts += 1
            delay = min(self.settings.jobs.restart_backoff_seconds * 2 ** (restarts - 1), 60.0)
            code = 128 - returncode if returncode < 0 else returncode
            tail = last_line(self.runner, model.user, model.log_path(index))
            manager.set_replica(
                model_id,
                index,
                state="restarting",
                restarts=record["restarts"] + 1,
                message=f"exited with code {code}"
                + (f": {tail}" if tail else "")
                + f"; restarting in {delay:g}s",
            )
            await asyncio.sleep(delay)

    async def _launch(self, model: Deployment, record: dict, restarts: int):
        env = self.runner.base_env(model.user)
        await asyncio.to_thread(self._listen_dir, model.user)  # closed again, should it be open
        rest, grpc, _ = self._sockets(model, record["index"])
        home = env["HOME"]
        s3 = self.manager.s3
        if s3 is not None:
            account = await asyncio.to_thread(s3.ensure, model.user)
            env.update(account.env())
        poll = f"{self.settings.serving.poll_seconds:g}"
        batching = []
        if model.spec.batching is not None:
            batching = ["--enable_batching", "--batching_parameters_file",
                        f"{home}/{model.batching_path}"]  # fmt: skip
        env.update(
            visible_devices_env(record["gpus"]),
            GPULAB_SERVING_TOKEN=model.token,
            GPULAB_MODEL=model.name,
            PYTHONUNBUFFERED="1",
            TF_CPP_MIN_LOG_LEVEL="1",
        )
        launch = Launch(
            argv=[
                # gpulab's own model server: without the user's pip --user packages (-s)
                self.python, "-s", "-m", "gpulab.serving",
                "--port", "0", "--grpc_socket_path", grpc, "--rest_api_socket_path", rest,
                "--model_config_file", f"{home}/{model.config_path}",
                "--model_config_file_poll_wait_seconds", poll,
                "--file_system_poll_wait_seconds", poll,
                "--cache_dir", f"{home}/{model.folder}/cache",
                "--monitoring_config_file", f"{home}/{model.monitoring_path}",
                *batching,
            ],
            env=env,
            workdir="",
            log=model.log_path(record["index"]),
            header=f"==> gpulab: model {model.name}, replica {record['index']}, start "
            f"{restarts + 1}, {utcnow():%Y-%m-%d %H:%M:%S} UTC",
        )  # fmt: skip
        started = await self.runner.start(model.user, launch)
        if record["gpus"]:
            self.manager.ledger.attach(
                model.user, model.replica_key(record["index"]), started.pid, started.pid_started
            )
        self.manager.set_replica(
            model.id,
            record["index"],
            state="loading",
            pid=started.pid,
            pid_started=started.pid_started,
            started=utcnow().isoformat(),
            message="loading the model",
        )
        return started

    async def _follow(self, model_id: int, index: int, live: _Live, waiter, began: float) -> None:
        """Ask the replica for its model's status until its process ends: often while it
        loads, every few seconds once it serves."""
        manager = self.manager
        timeout = self.settings.serving.start_timeout_seconds
        while not waiter.done():
            model = manager.store.get_by_id(model_id)
            if model is None:
                return
            status = await manager.fetch_status(model, *live.rest)
            if status is not None:
                live.ready = manager.note_versions(model, index, status)
            elif time.monotonic() - began > timeout:
                manager.set_replica(
                    model_id, index, message=f"did not answer within {timeout:g}s of starting"
                )
                await self.runner.stop(live.started, self.settings.jobs.stop_grace_seconds)
            else:
                live.ready = False
            await asyncio.wait([waiter], timeout=2.0 if live.ready else 0.25)

    async def _write_config(self, model: Deployment, spec: ModelSpec) -> None:
        """The files its servers read: TF Serving's model config, monitoring config and,
        with batching, batching parameters."""
        home = self.runner.base_env(model.user)["HOME"]
        files = [
            ("model config", model.config_path, self.manager.config_text(spec, home)),
            ("monitoring config", model.monitoring_path, monitoring_config()),
        ]
        batching = batching_config(spec)
        if batching is not None:
            files.append(("batching parameters", model.batching_path, batching))
        for what, path, text in files:
            try:  # never blocks: homefs replaces whatever the owner put there, or says why not
                await asyncio.to_thread(self.runner.write_file, model.user, path, text.encode())
            except OSError as e:
                raise ModelError(409, f"cannot write the {what} ~/{path}: {e.strerror}") from None
