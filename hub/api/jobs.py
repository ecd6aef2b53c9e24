"""Training jobs. Users act on their own jobs; admins on anyone's with ?user=NAME.

GET    /hub/api/gpulab/jobs                     list (admins: everyone's, or ?user=)
POST   /hub/api/gpulab/jobs                     submit a job spec (docs/jobs.md)
GET    /hub/api/gpulab/jobs/NAME                state, replicas, queue position, events
GET    /hub/api/gpulab/jobs/NAME/logs           ?replica=worker-0&follow=1&offset=N (text)
POST   /hub/api/gpulab/jobs/NAME/cancel         stop every replica, free GPUs and ports
DELETE /hub/api/gpulab/jobs/NAME                cancel if running, then forget the job
"""

from __future__ import annotations

import asyncio

from tornado.iostream import StreamClosedError

from .base import MAX_LOG_OFFSET, GpulabAPIHandler, mapped


class JobsAPIHandler(GpulabAPIHandler):
    def job(self, name: str):
        return mapped(self.gpulab.jobs.get, self.subject(), name)


class JobListHandler(JobsAPIHandler):
    async def get(self):
        me, admin = self.prepare_gpulab()
        only = self.target_user(me, admin)
        manager = self.gpulab.jobs
        jobs = manager.store.list(user=only, sweep=self.get_argument("sweep", None))
        self.write_json({"jobs": manager.models(jobs)})

    async def post(self):
        user = self.subject()
        manager = self.gpulab.jobs
        spec = mapped(manager.parse, self.body())
        job = mapped(manager.submit, user, self.groups_of(user), spec)
        self.set_status(201)
        self.write_json(manager.model(job))


class JobHandler(JobsAPIHandler):
    async def get(self, name):
        job = self.job(name)
        manager = self.gpulab.jobs
        self.write_json({**manager.model(job), "events": manager.store.events(job.id)})

    async def delete(self, name):
        await self.gpulab.jobs.delete(self.job(name))
        self.set_status(204)


class JobCancelHandler(JobsAPIHandler):
    async def post(self, name):
        manager = self.gpulab.jobs
        job = await manager.cancel(self.job(name), "cancelled by the user")
        self.write_json(manager.model(job))


class JobLogsHandler(JobsAPIHandler):
    async def get(self, name):
        job = self.job(name)
        manager = self.gpulab.jobs
        first = job.replicas[0].name if job.replicas else ""
        replica = self.get_argument("replica", first)
        follow = self.get_argument("follow", "0").lower() in ("1", "true", "yes")
        offset = self.query_int("offset", 0, 0, MAX_LOG_OFFSET)
        chunk = await asyncio.to_thread(mapped, manager.read_log, job, replica, offset)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("X-Accel-Buffering", "no")
        while True:
            if chunk:
                offset += len(chunk)
                self.write(chunk)
                try:
                    await self.flush()
                except StreamClosedError:
                    return
            if not chunk:
                if not follow:
                    break
                current = manager.store.get_by_id(job.id)
                if current is None or not current.writing(replica):
                    # one last read: what was written between the last read and the end
                    tail = await asyncio.to_thread(manager.read_log, job, replica, offset)
                    if tail:
                        self.write(tail)
                    break
                await asyncio.sleep(0.3)
            chunk = await asyncio.to_thread(manager.read_log, job, replica, offset)
        self.finish()


default_handlers = [
    (r"/api/gpulab/jobs", JobListHandler),
    (r"/api/gpulab/jobs/([^/]+)", JobHandler),
    (r"/api/gpulab/jobs/([^/]+)/cancel", JobCancelHandler),
    (r"/api/gpulab/jobs/([^/]+)/logs", JobLogsHandler),
]
