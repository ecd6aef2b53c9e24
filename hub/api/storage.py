"""Storage endpoints: a user's home volume and S3 bucket.

GET  /hub/api/gpulab/storage[?user=NAME]                  volume and bucket, sizes and use
POST /hub/api/gpulab/storage/s3/rotate-keys[?user=NAME]   new S3 keys; the old stop working
"""

from __future__ import annotations

import asyncio

from tornado import web

from gpulab.hub.app import context
from gpulab.hub.storage import StorageError
from gpulab.hub.storage.local import LocalHomes

from .gpus import GpulabAPIHandler


class StorageAPIHandler(GpulabAPIHandler):
    def subject(self) -> str:
        """The one user a storage request is about: oneself, or ?user= for admins."""
        me, admin = self.prepare_gpulab()
        user = self.target_user(me, admin)
        if user is None:
            raise web.HTTPError(400, "Name the user with ?user=NAME")
        return user

    async def run(self, fn, *args):
        """Storage calls block on Ceph: run them off the event loop, map their errors."""
        try:
            return await asyncio.to_thread(fn, *args)
        except StorageError as e:
            raise web.HTTPError(e.status, str(e)) from None


class StorageHandler(StorageAPIHandler):
    async def get(self):
        user = self.subject()
        ctx = context()
        homes = LocalHomes(ctx.settings.data_path, ctx.settings.storage.home_size_bytes)
        try:
            volume = (await self.run(homes.info, user)).as_json()
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


class RotateKeysHandler(StorageAPIHandler):
    async def post(self):
        user = self.subject()
        s3 = context().s3
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
    (r"/api/gpulab/storage/s3/rotate-keys", RotateKeysHandler),
]
