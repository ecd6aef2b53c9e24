"""Environment snapshots (docs/environments.md#snapshots). Users act on their own; admins on
anyone's with ?user=NAME.

GET    /hub/api/gpulab/environments          list: one's own, and those shared with one's
                                             groups (admins: everyone's, or ?user=)
POST   /hub/api/gpulab/environments          {"name", "description", "groups"}: save (202;
                                             its state goes from saving to ready or failed)
GET    /hub/api/gpulab/environments/NAME     describe: the image, what it adds over the base
PATCH  /hub/api/gpulab/environments/NAME     {"groups": [...]}: share with one's groups
DELETE /hub/api/gpulab/environments/NAME     delete it (and its image)
"""

from __future__ import annotations

from tornado import web

from gpulab.hub.environments.manager import SnapshotError

from .base import GpulabAPIHandler, amapped, mapped


class EnvironmentsAPIHandler(GpulabAPIHandler):
    @property
    def manager(self):
        try:
            return self.gpulab.environments
        except SnapshotError as e:
            raise web.HTTPError(e.status, str(e)) from None

    def current(self, user: str) -> str | None:
        """The snapshot the user's default server started from, if it runs."""
        found = self.find_user(user)
        spawner = found.spawners.get("") if found is not None else None
        if spawner is None or not (spawner.active or spawner.ready):
            return None
        return (spawner.user_options or {}).get("environment") or None


class EnvironmentListHandler(EnvironmentsAPIHandler):
    async def get(self):
        me, admin = self.prepare_gpulab()
        only = self.target_user(me, admin)
        manager = self.manager
        groups = self.groups_of(only) if only is not None else None
        envs = manager.store.list(user=only, groups=groups)
        self.write_json({"environments": [manager.model(e) for e in envs]})

    async def post(self):
        user = self.subject()
        body = self.body()
        unknown = set(body) - {"name", "description", "groups"}
        if unknown:
            raise web.HTTPError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        groups = body.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise web.HTTPError(400, "groups must be a list of group names")
        manager = self.manager
        env = await amapped(
            manager.save,
            user,
            body.get("name"),
            body.get("description", ""),
            groups,
            self.current(user),
            self.groups_of(user),
        )
        self.set_status(202)
        self.write_json(manager.model(env))


class EnvironmentHandler(EnvironmentsAPIHandler):
    async def get(self, name):
        manager = self.manager
        self.write_json(manager.model(mapped(manager.get, self.subject(), name)))

    async def patch(self, name):
        user = self.subject()
        manager = self.manager
        env = mapped(manager.get, user, name)
        body = self.body()
        if set(body) != {"groups"}:
            raise web.HTTPError(400, 'the body must be {"groups": [...]}: the groups to share with')
        env = mapped(manager.share, env, body["groups"], self.groups_of(user))
        self.write_json(manager.model(env))

    async def delete(self, name):
        manager = self.manager
        await amapped(manager.delete, mapped(manager.get, self.subject(), name))
        self.set_status(204)


default_handlers = [
    (r"/api/gpulab/environments", EnvironmentListHandler),
    (r"/api/gpulab/environments/([^/]+)", EnvironmentHandler),
]
