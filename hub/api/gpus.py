"""GET /hub/api/gpulab/gpus and /hub/api/gpulab/events: the GPU pool and its history.

Admins (tokens with ``admin:users``) see every holder and the queue of requests waiting
for GPUs (``queue``: servers' Get GPU and jobs, first come first served; with ``?user=``
that user's entries, at their places in the whole queue); users see the whole pool but
only their own grants by name, and only their own events.
"""

from __future__ import annotations

from gpulab.hub.ledger import is_workload

from .base import GpulabAPIHandler


class GpusHandler(GpulabAPIHandler):
    async def get(self):
        me, admin = self.prepare_gpulab()
        only = self.target_user(me, admin)
        ledger = self.gpulab.ledger
        gpus = []
        names: dict[str, str] = {}  # a workload's name, looked up once per request
        for gpu, grant in ledger.pool():
            model = {**gpu.as_json(), "state": "free" if grant is None else "held"}
            if grant is not None and (admin or grant.user == me):
                model.update(
                    user=grant.user,
                    server=grant.server,
                    holder=self.holder_label(grant.server, names),
                    since=grant.granted_at.isoformat(),
                )
            gpus.append(model)
        model = {
            "total": len(gpus),
            "free": sum(g["state"] == "free" for g in gpus),
            "gpus": gpus,
        }
        if admin:
            model["queue"] = self.queue(only, names)
        if only is not None:
            model["user"] = {
                "name": only,
                "held": sum(g.get("user") == only for g in gpus),
                "limit": ledger.user_limit(only),
            }
        self.write_json(model)

    def queue(self, only: str | None, names: dict[str, str]) -> list[dict]:
        """The requests waiting for GPUs, in order (``only``: that user's)."""
        return [
            {
                "user": w.user,
                "server": w.server,
                "holder": self.holder_label(w.server, names),
                "count": w.count,
                "since": w.since.isoformat(),
                "position": n,
            }
            for n, w in enumerate(self.gpulab.ledger.queue(), 1)
            if only is None or w.user == only
        ]

    def holder_label(self, server: str, names: dict[str, str]) -> str:
        """Who holds a grant or waits in the queue, in words: ``job mnist (worker-0)``,
        ``model line (replica 0)``, ``job mnist`` (a job waiting), else the server's name
        (``""`` for a user's default server). ``names``: workloads' names already looked up."""
        if not is_workload(server):
            return server
        kind, _, rest = server.partition("/")
        ident, _, part = rest.partition("/")
        key = f"{kind}/{ident}"
        if key not in names:
            names[key] = self._workload_name(kind, ident)
        if not part:
            return f"{kind} {names[key]}"
        return f"{kind} {names[key]} ({part.replace('replica-', 'replica ')})"

    def _workload_name(self, kind: str, ident: str) -> str:
        record = None
        if ident.isdigit() and kind == "job":
            record = self.gpulab.jobs.store.get_by_id(int(ident))
        elif ident.isdigit() and kind == "model":
            record = self.gpulab.models.store.get_by_id(int(ident))
        return record.name if record is not None else f"#{ident}"


class EventsHandler(GpulabAPIHandler):
    async def get(self):
        me, admin = self.prepare_gpulab()
        only = self.target_user(me, admin)
        limit = self.query_int("limit", 100, 1, 10_000)
        events = self.gpulab.ledger.events(user=only, limit=limit)
        self.write_json({"events": [e.as_json() for e in events]})


default_handlers = [
    (r"/api/gpulab/gpus", GpusHandler),
    (r"/api/gpulab/events", EventsHandler),
]
