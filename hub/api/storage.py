"""Storage endpoints: a user's home volume and S3 bucket. All take ?user=NAME (admins).

GET    /hub/api/gpulab/storage                                 volume and bucket, sizes, use
POST   /hub/api/gpulab/storage/volume/resize                   {"size": "20GiB"}: grow
GET    /hub/api/gpulab/storage/volume/snapshots                list
POST   /hub/api/gpulab/storage/volume/snapshots                {"name": "before-upgrade"}
POST   /hub/api/gpulab/storage/volume/snapshots/NAME/rollback  server must be stopped
DELETE /hub/api/gpulab/storage/volume/snapshots/NAME
DELETE /hub/api/gpulab/storage/volume?user=NAME&confirm=NAME  admins only
POST   /hub/api/gpulab/storage/s3/rotate-keys                  new S3 keys; old ones stop
"""

from __future__ import annotations

import asyncio

from tornado import web

from gpulab.hub.settings import SettingsError, format_size, parse_size
from gpulab.hub.storage import HomeVolumes, StorageError

from .base import GpulabAPIHandler


class StorageAPIHandler(GpulabAPIHandler):
    async def homes(self, user: str) -> HomeVolumes:
        found = self.find_user(user)
        running = bool(found and found.active)  # read here: the hub's ORM is not thread-safe
        try:
            return await self.gpulab.backend.homes(user, running)
        except StorageError as e:
            raise web.HTTPError(e.status, str(e)) from None

    async def run(self, fn, *args):
        """Storage calls block on Ceph: run them off the event loop, map their errors."""
        try:
            return await asyncio.to_thread(fn, *args)
        except StorageError as e:
            raise web.HTTPError(e.status, str(e)) from None


class StorageHandler(StorageAPIHandler):
    async def get(self):
        user = self.subject()
        ctx = self.gpulab
        try:
            volume = (await self.run((await self.homes(user)).info, user)).as_json()
        except web.HTTPError as e:
            if e.status_code != 404:
                raise
            volume = None
        s3 = None
        if ctx.s3 is not None:
            account = await self.run(ctx.s3.account, user)
            s3 = account.as_json() if account else None
        self.write_json(
            {"user": user, "volume": volume, "s3": s3, "s3_enabled": ctx.s3 is not None}
        )


class VolumeHandler(StorageAPIHandler):
    async def delete(self):
        user = self.subject()
        if not self.acting_as_admin:
            raise web.HTTPError(403, "Only admins delete home volumes")
        if self.get_argument("user", None) is None:
            raise web.HTTPError(400, "Name the user whose home to delete with ?user=NAME")
        homes = await self.homes(user)
        await self.run(homes.delete, user, self.get_argument("confirm", None))
        self.set_status(204)


class ResizeHandler(StorageAPIHandler):
    async def post(self):
        user = self.subject()
        size = self.body().get("size")
        if size is None:
            raise web.HTTPError(400, 'Give the new size: {"size": "20GiB"} or a number of bytes')
        try:
            size_bytes = parse_size(size, "size")
        except SettingsError as e:
            raise web.HTTPError(400, str(e)) from None
        limit = self.gpulab.settings.storage.home_max_size_bytes
        if size_bytes > limit and not self.acting_as_admin:
            raise web.HTTPError(
                403, f"Homes grow to at most {format_size(limit)}; ask an admin for more"
            )
        volume = await self.run((await self.homes(user)).resize, user, size_bytes)
        self.write_json(volume.as_json())


class SnapshotsHandler(StorageAPIHandler):
    async def get(self):
        user = self.subject()
        snaps = await self.run((await self.homes(user)).snapshots, user)
        self.write_json({"snapshots": [s.as_json() for s in snaps]})

    async def post(self):
        user = self.subject()
        name = self.body().get("name")
        snap = await self.run((await self.homes(user)).create_snapshot, user, name)
        self.set_status(201)
        self.write_json(snap.as_json())


class SnapshotHandler(StorageAPIHandler):
    async def delete(self, name, action=None):
        if action is not None:
            raise web.HTTPError(405, f"DELETE the snapshot itself, not its {action}")
        user = self.subject()
        await self.run((await self.homes(user)).delete_snapshot, user, name)
        self.set_status(204)

    async def post(self, name, action=None):
        if action != "rollback":
            raise web.HTTPError(405, f"POST .../snapshots/{name}/rollback to roll back")
        user = self.subject()
        volume = await self.run((await self.homes(user)).rollback, user, name)
        self.write_json(volume.as_json())


class RotateKeysHandler(StorageAPIHandler):
    async def post(self):
        user = self.subject()
        s3 = self.gpulab.s3
        if s3 is None:
            raise web.HTTPError(404, "S3 is not configured on this hub")
        account = await self.run(s3.rotate_keys, user)
        self.write_json(
            {
                **account.as_json(),
                "secret_key": account.secret_key,
                "message": "The old keys no longer work. Running servers keep the old ones "
                "until they restart.",
            }
        )


default_handlers = [
    (r"/api/gpulab/storage", StorageHandler),
    (r"/api/gpulab/storage/volume", VolumeHandler),
    (r"/api/gpulab/storage/volume/resize", ResizeHandler),
    (r"/api/gpulab/storage/volume/snapshots", SnapshotsHandler),
    (r"/api/gpulab/storage/volume/snapshots/([^/]+)", SnapshotHandler),
    (r"/api/gpulab/storage/volume/snapshots/([^/]+)/(rollback)", SnapshotHandler),
    (r"/api/gpulab/storage/s3/rotate-keys", RotateKeysHandler),
]
