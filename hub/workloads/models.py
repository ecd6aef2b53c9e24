"""Model serving in the hub: deploy a user's SavedModel behind model servers, keep them
running, and say where to call them.

A deployment is a model name, a base path of numbered version folders (TF Serving's
layout) on the user's home or in their bucket, a version policy and labels, a number of
replicas and GPUs per replica. Each replica is one model server (``gpulab.serving``,
TF Serving's REST and gRPC APIs) run through the backend's runner as the user, on
loopback ports the hub gives it, with a token it demands on every call. The hub writes
the deployment as TF Serving's model config file on the home; the servers re-read it
and look for new version folders every ``serving.poll``, so a new version or a label
change reaches them without a restart and without a failed request.

The manager watches every replica: it asks each for its model's status to know which
answer, restarts one that exits (with a growing pause) and gives a deployment's GPUs
back only when it is undeployed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets

from tornado.httpclient import HTTPClientError, HTTPRequest

from gpulab.hub.ledger import GpuLedger, LedgerError, NoGpuFree, QuotaExceeded

from .model_spec import (
    MAX_REPLICAS,
    METRICS_PATH,
    ModelError,
    ModelSpec,
    parse_changes,
    parse_model,
    serving_config,
    token_header,
)
from .model_store import Deployment, ModelStore
from .replica_http import ReplicaHTTPClient
from .replica_metrics import merged
from .runner import PortPool
from .spec import SpecError

log = logging.getLogger(__name__)

MAX_METRICS_BYTES = 4 << 20
"""The most of one replica's metrics the hub reads (TF Serving's are some kilobytes)."""
METRICS_TIMEOUT = 10
"""Seconds a replica has to answer its metrics."""


# -- the manager ---------------------------------------------------------------------------


def new_replicas(first: int, count: int, port) -> list[dict]:
    """Records of replicas ``first``.. ``first + count - 1``, each with its ports."""
    return [
        {"index": i, "state": "starting", "rest": port(), "grpc": port(), "gpus": [],
         "node": "", "pid": None, "pid_started": None, "restarts": 0, "message": "",
         "started": None}
        for i in range(first, first + count)
    ]  # fmt: skip


class ModelManager:
    """Deployments, their GPUs and who may call them, over a backend that runs the
    replicas (``gpulab.spawner.local_models.LocalModels`` on this machine,
    ``gpulab.spawner.kube_models.KubeModels`` on Kubernetes)."""

    def __init__(self, ledger: GpuLedger, settings, backend=None, s3=None):
        self.ledger = ledger
        self.settings = settings
        self.s3 = s3
        """Per-user S3 accounts (``RgwAccounts``): models are read from their user's bucket."""
        self.store = ModelStore(ledger.engine)
        self.backend = backend
        self._ports = PortPool()
        self._turn: dict[int, int] = {}
        self._http = ReplicaHTTPClient()  # checks whom it reaches before sending the token
        self._metrics_http: ReplicaHTTPClient | None = None
        self.taken_over = asyncio.Event()
        """Set once the servers an earlier hub process started are supervised again (at
        once on a fresh hub). Changes wait for it: a model undeployed before would keep
        a server no one stops, and a new one could be given a port still in use."""

    # -- requests ------------------------------------------------------------------------

    def parse(self, body: object) -> ModelSpec:
        try:
            return parse_model(body, self.settings.serving.max_replicas)
        except SpecError as e:
            raise ModelError(400, str(e)) from None

    def get(self, user: str, name: str) -> Deployment:
        model = self.store.get(user, name)
        if model is None:
            raise ModelError(404, f"{user} has no model named {name}")
        return model

    def may_call(self, model: Deployment, user: str | None, groups: list[str], admin: bool,
                 token: str | None) -> bool:  # fmt: skip
        """Whether a caller may send requests to the model: its owner and admins always;
        members of its group when shared with one; anyone with its token when public."""
        if admin or (user is not None and user == model.user):
            return True
        access = model.spec.access
        if access.startswith("group:") and access[len("group:") :] in groups:
            return user is not None
        if access == "public" and token:
            return secrets.compare_digest(token, model.token)
        return False

    async def deploy(self, user: str, groups: list[str], spec: ModelSpec) -> Deployment:
        if self.backend is None:
            raise ModelError(
                501, f"model serving does not run on the {self.settings.backend} backend"
            )
        await self.taken_over.wait()
        await self.backend.check(user, spec)
        replicas = new_replicas(0, spec.replicas, self._ports.take)
        model = self.store.create(user, spec, replicas)
        if model is None:
            self._free_ports(replicas)
            raise ModelError(
                409, f"{user} already has a model named {spec.name}; undeploy it first"
            )
        if spec.gpus:
            try:
                self._fits(user, groups, spec)
                self._grant(model, replicas, groups)
            except ModelError:
                self.store.delete(model.id)
                self._free_ports(replicas)
                raise
            self.store.update(model.id, replicas=replicas)
        model = self.store.get_by_id(model.id)
        try:
            await self.backend.start(model)
        except ModelError:
            await self._forget(model)
            raise
        log.info("Model %s/%s deployed (%d replicas)", user, spec.name, spec.replicas)
        return self.store.get_by_id(model.id)

    def _fits(self, user: str, groups: list[str], spec: ModelSpec) -> None:
        refused = self.ledger.never_granted(
            user, groups, spec.gpus * spec.replicas, {"gpus": spec.gpus}, "the model"
        )
        if refused:
            raise ModelError(*refused)

    def _grant(self, model: Deployment, replicas: list[dict], groups: list[str]) -> None:
        wants = [(model.replica_key(r["index"]), model.spec.gpus) for r in replicas]
        try:
            granted = self.ledger.reserve_many(model.user, wants, groups, f"model {model.name}")
        except QuotaExceeded as e:
            raise ModelError(403, str(e)) from None
        except NoGpuFree as e:
            raise ModelError(409, f"no GPU free for the model: {e.message_for(False)}") from None
        except LedgerError as e:
            raise ModelError(409, str(e)) from None
        for r in replicas:
            gpus = granted.get(model.replica_key(r["index"]), [])
            r["gpus"] = [g.id for g in gpus]
            r["node"] = gpus[0].node if gpus else ""

    async def update(self, model: Deployment, body: object, groups: list[str]) -> Deployment:
        """Change versions, labels, access or the replica count of a deployed model,
        without a failed request: replicas are added or removed, and the others take the
        new config."""
        model = await self._current(model)
        try:
            spec = parse_changes(model.spec, body, self.settings.serving.max_replicas)
        except SpecError as e:
            raise ModelError(400, str(e)) from None
        await self.backend.check(model.user, spec)
        replicas = [dict(r) for r in model.replicas]
        added = new_replicas(len(replicas), max(0, spec.replicas - len(replicas)), self._ports.take)
        if added and spec.gpus:
            try:
                self._fits(model.user, groups, spec)
                self._grant(model, added, groups)
            except ModelError:
                self._free_ports(added)
                raise
        removed = replicas[spec.replicas :]
        self.store.update(model.id, spec=spec, replicas=replicas[: spec.replicas] + added)
        current = self.store.get_by_id(model.id)
        await self.backend.apply(current, removed, added)
        for r in removed:
            self.ledger.release(model.user, model.replica_key(r["index"]), "replicas reduced")
            self._free_ports([r])
        return self.store.get_by_id(model.id)

    async def undeploy(self, model: Deployment) -> None:
        model = await self._current(model)
        await self.backend.stop(model)
        await self._forget(model)
        log.info("Model %s/%s undeployed", model.user, model.name)

    async def _current(self, model: Deployment) -> Deployment:
        """``model`` as it stands once the hub supervises its servers."""
        await self.taken_over.wait()
        current = self.store.get_by_id(model.id)
        if current is None:
            raise ModelError(404, f"{model.user} has no model named {model.name}")
        return current

    async def _forget(self, model: Deployment) -> None:
        for r in model.replicas:
            self.ledger.release(
                model.user, model.replica_key(r["index"]), f"model {model.name} undeployed"
            )
        self._free_ports(model.replicas)
        self._turn.pop(model.id, None)
        self.store.delete(model.id)

    async def read_log(self, model: Deployment, index: int, offset: int = 0) -> bytes:
        if not any(r["index"] == index for r in model.replicas):
            raise ModelError(404, f"model {model.name} has no replica {index}")
        return await self.backend.read_log(model, index, offset)

    async def metrics(self, model: Deployment) -> str:
        """TF Serving's Prometheus metrics of every replica, asked at once, as one
        exposition: each sample labelled ``replica="N"``, a replica that does not answer
        named in a comment line. ModelError 503 when none answers."""
        where = self.backend.replica_endpoints(model)
        indices = [r["index"] for r in model.replicas]
        answers = await asyncio.gather(
            *(self._replica_metrics(model, where.get(i)) for i in indices)
        )
        texts = {i: text for i, (text, _) in zip(indices, answers, strict=True) if text is not None}
        missing = {i: why for i, (text, why) in zip(indices, answers, strict=True) if text is None}
        if not texts:
            whys = "; ".join(f"replica {i}: {why}" for i, why in sorted(missing.items()))
            raise ModelError(503, f"no replica of model {model.name} answered: {whys}")
        return merged(texts, missing)

    async def _replica_metrics(self, model: Deployment,
                               address: tuple[str, int] | None) -> tuple[str | None, str]:  # fmt: skip
        """(one replica's Prometheus text, or None and why not)."""
        if address is None:
            return None, "no server running"
        if self._metrics_http is None:  # bounded bodies; one request per replica at once
            self._metrics_http = ReplicaHTTPClient(
                force_instance=True, max_body_size=MAX_METRICS_BYTES, max_clients=MAX_REPLICAS
            )
        host, port = address
        request = HTTPRequest(
            f"http://{host}:{port}{METRICS_PATH}",
            headers=token_header(model, host),
            request_timeout=METRICS_TIMEOUT,
        )
        try:
            response = await self._metrics_http.fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as e:
            return None, str(e) or type(e).__name__
        if response.code != 200:
            return None, str(response.error) if response.code == 599 else f"HTTP {response.code}"
        return response.body.decode(errors="replace"), ""

    def targets(self, model: Deployment) -> list[tuple[str, int]]:
        """(host, REST port) of the replicas to send a call to, in the order to try
        them: the ready ones taking turns, then the others (one may be ready by now)."""
        ready, others = self.backend.endpoints(model)
        if ready:
            turn = self._turn.get(model.id, 0) % len(ready)
            self._turn[model.id] = turn + 1
            ready = ready[turn:] + ready[:turn]
        return ready + others

    # -- what backends share --------------------------------------------------------------

    async def fetch_status(self, model: Deployment, host: str, port: int) -> list[dict] | None:
        """A replica's versions of the model (TF Serving's status), or None when it does
        not answer yet."""
        request = HTTPRequest(
            f"http://{host}:{port}/v1/models/{model.name}",
            headers=token_header(model, host),
            request_timeout=3,
        )
        try:
            response = await self._http.fetch(request, raise_error=False)
        except (OSError, HTTPClientError):
            return None
        if response.code == 404:
            return []
        if response.code != 200:
            return None
        try:
            data = json.loads(response.body)
        except ValueError:
            return None
        out = []
        for item in data.get("model_version_status", []):
            status = item.get("status", {})
            failed = status.get("error_code", "OK") != "OK"
            out.append(
                {
                    "version": int(item.get("version", 0)),
                    "state": item.get("state", ""),
                    "error": status.get("error_message", "") if failed else "",
                }
            )
        return out

    def note_versions(self, model: Deployment, index: int, versions: list[dict]) -> bool:
        """Record what a replica reported; whether it serves."""
        record = next((r for r in model.replicas if r["index"] == index), None)
        ready = any(v["state"] == "AVAILABLE" for v in versions)
        if record is None:
            return ready
        failed = [v for v in versions if v["error"]]
        serving = [v["version"] for v in versions if v["state"] == "AVAILABLE"]
        if ready:
            state, message = "available", f"serving version {', '.join(map(str, serving))}"
        elif failed:
            v = failed[0]
            state, message = "failed", f"version {v['version']} did not load: {v['error']}"
        else:
            loading = [str(v["version"]) for v in versions if v["state"] in ("START", "LOADING")]
            state = "loading"
            message = f"loading version {', '.join(loading)}" if loading else "looking for versions"
        if (record["state"], record["message"], record.get("serving")) != (state, message, serving):
            self.set_replica(model.id, index, state=state, message=message, serving=serving)
        if versions != model.versions and (ready or index == 0):
            self.store.update(model.id, versions=versions)
        return ready

    def set_replica(self, model_id: int, index: int, **fields) -> None:
        """Change a replica's record, and the model's state and message with it."""
        model = self.store.get_by_id(model_id)
        if model is None:
            return
        replicas = [dict(r) for r in model.replicas]
        for r in replicas:
            if r["index"] == index:
                r.update(fields)
        states = [r["state"] for r in replicas]
        if "available" in states:
            state = "available"
            up = states.count("available")
            message = (
                f"{up} of {len(states)} replicas serving"
                if up < len(states)
                else next(r["message"] for r in replicas if r["state"] == "available")
            )
        elif all(s == "failed" for s in states):
            state, message = "failed", replicas[0]["message"]
        elif model.state in ("available", "unavailable"):
            state, message = "unavailable", replicas[0]["message"]
        else:
            state, message = "deploying", replicas[0]["message"]
        self.store.update(model_id, replicas=replicas, state=state, message=message)

    def config_text(self, spec: ModelSpec, home: str) -> str:
        """TF Serving's model config file for a deployment whose owner's home is ``home``."""
        from gpulab.serving.config import to_text

        return to_text([serving_config(spec, home)])

    def _free_ports(self, replicas: list[dict]) -> None:
        for r in replicas:
            self._ports.release(r["rest"], r["grpc"])

    # -- after a hub restart -------------------------------------------------------------

    async def run_background(self) -> None:
        """At hub start: take over the model servers an earlier hub process started."""
        if self.backend is None:
            self.taken_over.set()
            return
        try:
            held = {(g.user, g.server) for g in self.ledger.grants()}
            for model in self.store.list():
                await self._take_over(model, held)
        except Exception:  # noqa: BLE001 -- the hub must run on
            log.exception("Taking over model servers after a restart failed")
        finally:
            self.taken_over.set()

    async def _take_over(self, model: Deployment, held: set) -> None:
        """Supervise one model's servers again. A failure is this model's alone: the
        others are still taken over (one left out would have no one to stop its servers)."""
        try:
            for r in model.replicas:
                self._ports.hold(r["rest"], r["grpc"])
                if r["gpus"] and (model.user, model.replica_key(r["index"])) not in held:
                    try:
                        self._grant(model, [r], [])
                    except ModelError as e:
                        self.set_replica(model.id, r["index"], state="failed", message=str(e))
                        continue
                    self.set_replica(model.id, r["index"], gpus=r["gpus"], node=r["node"])
            await self.backend.resume(self.store.get_by_id(model.id))
            log.info("Model %s/%s: supervised again after a hub restart", model.user,
                     model.name)  # fmt: skip
        except Exception:  # noqa: BLE001 -- the hub must run on
            log.exception("Taking over model %s/%s after a restart failed", model.user, model.name)
