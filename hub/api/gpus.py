"""GET /hub/api/gpulab/gpus and /hub/api/gpulab/events: the GPU pool and its history.

Admins (tokens with ``admin:users``) see every holder; users see the whole pool but
only their own grants by name, and only their own events.
"""

from __future__ import annotations

import json

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from gpulab.hub.app import context
from gpulab.hub.ledger import is_workload

NO_USER = (
    "This token is a service's, not a user's: name the user with ?user=NAME "
    "(in the gpulab CLI, --user NAME)"
)


class GpulabAPIHandler(APIHandler):
    """Base for gpulab endpoints: authenticated, JSON in and out, clear 4xx errors."""

    def prepare_gpulab(self) -> tuple[str | None, bool]:
        """(name of the requesting user or None for a service, whether it acts as admin)."""
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        name = getattr(self.current_user, "name", None)
        is_user = self.current_user.kind == "user" if hasattr(self.current_user, "kind") else True
        return (name if is_user else None), self.has_scope("admin:users")

    def subject(self) -> str:
        """The one user a request is about: oneself, or ?user=NAME for admins."""
        me, admin = self.prepare_gpulab()
        self.acting_as_admin = admin
        user = self.target_user(me, admin) or me
        if user is None:
            raise web.HTTPError(400, NO_USER)
        return user

    def target_user(self, me: str | None, admin: bool) -> str | None:
        """The ``?user=`` a request is about: anyone for admins, oneself for users."""
        wanted = self.get_argument("user", None)
        if wanted is None:
            return None if admin else me
        if not admin and wanted != me:
            raise web.HTTPError(403, f"Only admins act for other users; you are not {wanted}")
        if self.find_user(wanted) is None:
            raise web.HTTPError(404, f"No such user: {wanted}")
        return wanted

    def groups_of(self, user: str) -> list[str]:
        """The hub groups ``user`` is in (for group quotas and sharing)."""
        found = self.find_user(user)
        return [g.name for g in found.groups] if found is not None else []

    def body(self) -> dict:
        """The request's JSON object, or a 400 saying what is wrong with it."""
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "The request body must be JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "The request body must be a JSON object")
        return data

    def write_json(self, model) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(model))


class GpusHandler(GpulabAPIHandler):
    async def get(self):
        me, admin = self.prepare_gpulab()
        only = self.target_user(me, admin)
        ledger = context().ledger
        gpus = []
        names: dict[str, str] = {}  # a workload's name, looked up once per request
        for gpu, grant in ledger.pool():
            model = {**gpu.as_json(), "state": "free" if grant is None else "held"}
            if grant is not None and (admin or grant.user == me):
                model.update(
                    user=grant.user,
                    server=grant.server,
                    holder=holder_label(grant.server, names),
                    since=grant.granted_at.isoformat(),
                )
            gpus.append(model)
        model = {
            "total": len(gpus),
            "free": sum(g["state"] == "free" for g in gpus),
            "gpus": gpus,
        }
        if only is not None:
            model["user"] = {
                "name": only,
                "held": sum(g.get("user") == only for g in gpus),
                "limit": ledger.user_limit(only),
            }
        self.write_json(model)


def holder_label(server: str, names: dict[str, str]) -> str:
    """Who holds a grant, in words: ``job mnist (worker-0)``, ``model line (replica 0)``,
    else the server's name (``""`` for a user's default server). ``names``: workloads'
    names already looked up."""
    if not is_workload(server):
        return server
    kind, _, rest = server.partition("/")
    ident, _, part = rest.partition("/")
    key = f"{kind}/{ident}"
    if key not in names:
        names[key] = _workload_name(kind, ident)
    return f"{kind} {names[key]} ({part.replace('replica-', 'replica ')})"


def _workload_name(kind: str, ident: str) -> str:
    record = None
    if ident.isdigit() and kind == "job":
        from gpulab.hub.workloads.jobs import job_manager

        record = job_manager().store.get_by_id(int(ident))
    elif ident.isdigit() and kind == "model":
        from gpulab.hub.workloads.models import model_manager

        record = model_manager().store.get_by_id(int(ident))
    return record.name if record is not None else f"#{ident}"


class EventsHandler(GpulabAPIHandler):
    async def get(self):
        me, admin = self.prepare_gpulab()
        only = self.target_user(me, admin)
        try:
            limit = int(self.get_argument("limit", "100"))
        except ValueError:
            raise web.HTTPError(400, "limit must be a whole number") from None
        if not 1 <= limit <= 10_000:
            raise web.HTTPError(400, "limit must be between 1 and 10000")
        events = context().ledger.events(user=only, limit=limit)
        self.write_json({"events": [e.as_json() for e in events]})


default_handlers = [
    (r"/api/gpulab/gpus", GpusHandler),
    (r"/api/gpulab/events", EventsHandler),
]
