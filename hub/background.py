"""Tasks the hub runs beside its requests (the GPU switch's, the job and model managers',
a backend's watches), started from its configuration once the hub serves."""

from __future__ import annotations

import asyncio
import logging

from jupyterhub.app import JupyterHub

log = logging.getLogger("gpulab")


def start_background(run) -> None:
    """Run ``run(app)`` as a task of the hub, once it has started."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # configuration read outside a hub (tests, tools)
        return
    app = JupyterHub.instance()

    async def when_started():
        while getattr(app, "http_server", None) is None:
            await asyncio.sleep(0.2)
        share_hub_log(app)
        await run(app)

    task = loop.create_task(when_started())
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set = set()


def share_hub_log(app) -> None:
    """gpulab's own messages (the ``gpulab.*`` loggers) go where the hub's go, at its level:
    without this they had no handler, and only warnings reached the hub's output, bare."""
    if log.handlers or not app.log.handlers:
        return
    for handler in app.log.handlers:
        log.addHandler(handler)
    log.setLevel(app.log.level)
    log.propagate = False
