"""Hyperparameter sweeps. Users act on their own; admins on anyone's with ?user=NAME.

GET    /hub/api/gpulab/sweeps               list (admins: everyone's, or ?user=)
POST   /hub/api/gpulab/sweeps               submit: a job template, parameters, objective
GET    /hub/api/gpulab/sweeps/NAME          trials sorted by the objective, the best one
POST   /hub/api/gpulab/sweeps/NAME/cancel   stop its running trials, start no more
DELETE /hub/api/gpulab/sweeps/NAME          cancel, then forget it and its trials
"""

from __future__ import annotations

from .base import amapped, mapped
from .jobs import JobsAPIHandler


class SweepListHandler(JobsAPIHandler):
    async def get(self):
        me, admin = self.prepare_gpulab()
        only = self.target_user(me, admin)
        self.write_json({"sweeps": self.gpulab.jobs.sweeps.list(user=only)})

    async def post(self):
        user = self.subject()
        sweeps = self.gpulab.jobs.sweeps
        spec = mapped(sweeps.parse, self.body())
        model = mapped(sweeps.submit, user, self.groups_of(user), spec)
        self.set_status(201)
        self.write_json(model)


class SweepHandler(JobsAPIHandler):
    async def get(self, name):
        self.write_json(mapped(self.gpulab.jobs.sweeps.model, self.subject(), name))

    async def delete(self, name):
        user = self.subject()
        await amapped(self.gpulab.jobs.sweeps.delete, user, name)
        self.set_status(204)


class SweepCancelHandler(JobsAPIHandler):
    async def post(self, name):
        user = self.subject()
        self.write_json(await amapped(self.gpulab.jobs.sweeps.cancel, user, name))


default_handlers = [
    (r"/api/gpulab/sweeps", SweepListHandler),
    (r"/api/gpulab/sweeps/([^/]+)", SweepHandler),
    (r"/api/gpulab/sweeps/([^/]+)/cancel", SweepCancelHandler),
]
