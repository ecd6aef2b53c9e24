"""Model serving. Users act on their own models; admins on anyone's with ?user=NAME.

GET    /hub/api/gpulab/models                  list (admins: everyone's, or ?user=)
POST   /hub/api/gpulab/models                  deploy (docs/serving.md)
GET    /hub/api/gpulab/models/NAME             state, versions, replicas, endpoints, token
PATCH  /hub/api/gpulab/models/NAME             versions, labels, replicas, access
DELETE /hub/api/gpulab/models/NAME             stop its servers, free its GPUs and ports
GET    /hub/api/gpulab/models/NAME/logs        ?replica=0&offset=N (text)
GET    /hub/api/gpulab/models/NAME/metrics     TF Serving's Prometheus metrics of every
                                               replica, labelled replica="N" (text)

Calls, in TF Serving's REST API, passed to one of the model's replicas:
       /hub/api/gpulab/models/NAME:predict     (and /metadata, /versions/N..., /labels/L...)
                                               the caller's own model (admins: ?user=)
       /hub/api/gpulab/serving/USER/v1/...     TF Serving's whole REST API for USER's
                                               models: a base URL for any TF Serving client
A call is allowed for the owner and admins; for members of the group a model is shared
with (``access: group:NAME``); and with the model's token for a public one
(``Authorization: Bearer TOKEN``). Errors of calls carry TF Serving's ``error`` key.
"""

from __future__ import annotations

import json

from tornado import web
from tornado.httpclient import HTTPClientError, HTTPRequest

from gpulab.hub.workloads.model_spec import TOKEN_HEADER, token_header
from gpulab.hub.workloads.replica_http import ReplicaHTTPClient

from .base import MAX_LOG_OFFSET, GpulabAPIHandler, amapped, mapped

MAX_CALL_BYTES = 64 << 20
"""The largest body of a call passed to a model (a batch of inputs), below tornado's 100 MB."""


class ModelsAPIHandler(GpulabAPIHandler):
    def model(self, name: str):
        return mapped(self.gpulab.models.get, self.subject(), name)

    def may_see_token(self, model) -> bool:
        me, admin = self.prepare_gpulab()
        return admin or me == model.user


class ModelListHandler(ModelsAPIHandler):
    async def get(self):
        me, admin = self.prepare_gpulab()
        only = self.target_user(me, admin)
        models = self.gpulab.models.store.list(user=only)
        self.write_json({"models": [m.as_json() for m in models]})

    async def post(self):
        user = self.subject()
        manager = self.gpulab.models
        spec = mapped(manager.parse, self.body())
        model = await amapped(manager.deploy, user, self.groups_of(user), spec)
        self.set_status(201)
        self.write_json(model.as_json(with_token=True))


class ModelHandler(ModelsAPIHandler):
    async def get(self, name):
        model = self.model(name)
        self.write_json(model.as_json(with_token=self.may_see_token(model)))

    async def patch(self, name):
        model = self.model(name)
        changed = await amapped(
            self.gpulab.models.update, model, self.body(), self.groups_of(model.user)
        )
        self.write_json(changed.as_json(with_token=True))

    async def delete(self, name):
        await self.gpulab.models.undeploy(self.model(name))
        self.set_status(204)


class ModelLogsHandler(ModelsAPIHandler):
    async def get(self, name):
        model = self.model(name)
        replica = self.query_int("replica", 0, 0, 1_000)
        offset = self.query_int("offset", 0, 0, MAX_LOG_OFFSET)
        data = await amapped(self.gpulab.models.read_log, model, replica, offset)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(data)


PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class ModelMetricsHandler(ModelsAPIHandler):
    """What a Prometheus scrape of the model reads (its owner's or an admin's token)."""

    async def get(self, name):
        model = self.model(name)
        text = await amapped(self.gpulab.models.metrics, model)
        self.set_header("Content-Type", PROMETHEUS_TEXT)
        self.finish(text.encode())


class ModelCallHandler(GpulabAPIHandler):
    """A TF Serving REST call, checked here and passed to a replica of the model."""

    max_body_bytes = MAX_CALL_BYTES

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message, "status": status_code, "message": message}))

    def caller(self) -> tuple[str | None, bool, str | None]:
        """(hub user name or None, admin, the bearer token when it is not a hub token)."""
        user = self.current_user
        if user is not None:
            name = user.name if getattr(user, "kind", "user") == "user" else None
            return name, self.has_scope("admin:users"), None
        scheme, _, value = self.request.headers.get(TOKEN_HEADER, "").partition(" ")
        token = value.strip() if scheme.lower() in ("bearer", "token") else None
        return None, False, token

    def owner_model(self, owner: str, name: str):
        manager = self.gpulab.models
        me, admin, token = self.caller()
        model = manager.store.get(owner, name)
        groups = self.groups_of(me) if me else []
        if model is None or not manager.may_call(model, me, groups, admin, token):
            if me is None and token is None:
                raise web.HTTPError(403, "Missing or invalid credentials.")
            raise web.HTTPError(404, f"{owner} has no model named {name} that you may call")
        return model

    async def forward(self, model, rest: str) -> None:
        """Send the request to the model's replicas in turn until one answers."""
        manager = self.gpulab.models
        targets = manager.targets(model)
        if not targets:
            raise web.HTTPError(503, f"model {model.name} has no running server: {model.message}")
        path = f"/v1/models/{model.name}{rest}"
        # one per event loop; it sends nothing to a socket its owner's account does not hold
        client = ReplicaHTTPClient()
        body = bytes(self.request.body) if self.request.method == "POST" else None
        last = ""
        for host, port in targets:
            request = HTTPRequest(
                f"http://{host}:{port}{path}",
                method=self.request.method,
                body=body,
                headers={
                    **token_header(model, host),
                    "Content-Type": self.request.headers.get("Content-Type", "application/json"),
                },
                request_timeout=120,
            )
            try:
                response = await client.fetch(request, raise_error=False)
            except (OSError, HTTPClientError) as e:
                last = str(e)
                continue
            if response.code == 599:  # no connection: try the next replica
                last = str(response.error)
                continue
            self.set_status(response.code)
            self.set_header("Content-Type", "application/json")
            self.finish(response.body)
            return
        raise web.HTTPError(503, f"no server of model {model.name} answered: {last}")


class OwnModelCallHandler(ModelCallHandler):
    async def _call(self, name, rest):
        me, admin, _ = self.caller()
        if me is None and not admin:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        owner = self.target_user(me, admin) or me
        if owner is None:
            raise web.HTTPError(400, "Name the model's owner with ?user=NAME")
        await self.forward(self.owner_model(owner, name), rest)

    get = post = _call


class ServingCallHandler(ModelCallHandler):
    async def _call(self, owner, name, rest):
        await self.forward(self.owner_model(owner, name), rest)

    get = post = _call


default_handlers = [
    (r"/api/gpulab/models", ModelListHandler),
    (r"/api/gpulab/models/([^/:]+)", ModelHandler),
    (r"/api/gpulab/models/([^/:]+)/logs", ModelLogsHandler),
    (r"/api/gpulab/models/([^/:]+)/metrics", ModelMetricsHandler),
    (r"/api/gpulab/models/([^/:]+)((?::|/metadata|/versions/|/labels/).*)", OwnModelCallHandler),
    (r"/api/gpulab/serving/([^/]+)/v1/models/([^/:]+)(.*)", ServingCallHandler),
]
