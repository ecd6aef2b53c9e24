"""The gpulab Jupyter server extension: GPU state, Return GPU / Get GPU, kernel checkpoints.

Enabled for every server of the environment by
``etc/jupyter/jupyter_server_config.d/gpulab.json``.
"""

from __future__ import annotations

import os

# The hub's side of the internal API (``gpulab/internal/*``): it proves itself with a
# secret made for this one server at spawn, never with a token that is good at the hub,
# since the server process is the user's and sees every header it is sent.
INTERNAL_SECRET_ENV = "GPULAB_INTERNAL_SECRET"
"""The environment variable the spawner puts the server's secret in."""
INTERNAL_SECRET_HEADER = "X-Gpulab-Internal-Secret"
"""The request header the hub sends it in."""


def _jupyter_server_extension_points():
    return [{"module": "gpulab.extensions.server"}]


def _load_jupyter_server_extension(serverapp):
    from . import gate
    from .handlers import handlers
    from .hubstatus import HubStatus
    from .kernels import KernelSwitch

    web_app = serverapp.web_app
    switch = KernelSwitch(serverapp)
    web_app.settings["gpulab_switch"] = switch
    web_app.settings["gpulab_hub_status"] = HubStatus()
    # cells sent while a switch moves the kernels wait for their variables to be back
    if not gate.install(serverapp, switch.gate):
        serverapp.log.warning(
            "gpulab: kernels are reached through %s: cells sent during Return or Get GPU "
            "are not held",
            web_app.settings.get("kernel_websocket_connection_class"),
        )
    # kept by the extension alone: kernels and terminals started from here do not inherit it
    web_app.settings["gpulab_internal_secret"] = os.environ.pop(INTERNAL_SECRET_ENV, "")
    # a server that replaces a moved one (Return GPU on kubernetes) starts its notebooks
    # again, with their variables
    serverapp.io_loop.add_callback(switch.start_resume)
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.log.info(
        "gpulab: GPU return/get endpoints at %sgpulab/", web_app.settings["base_url"]
    )
