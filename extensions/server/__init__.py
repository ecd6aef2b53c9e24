"""The gpulab Jupyter server extension: GPU state, Return GPU / Get GPU, kernel checkpoints,
and the welcome notebook of a new home.

Enabled for every server of the environment by
``etc/jupyter/jupyter_server_config.d/gpulab.json``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .secret import INTERNAL_SECRET_ENV, INTERNAL_SECRET_HEADER, INTERNAL_SECRET_SETTING

__all__ = ["INTERNAL_SECRET_ENV", "INTERNAL_SECRET_HEADER"]


def _jupyter_server_extension_points():
    return [{"module": "gpulab.extensions.server"}]


def _load_jupyter_server_extension(serverapp):
    from . import gate
    from .handlers import handlers
    from .hubstatus import HubStatus
    from .kernels import KernelSwitch
    from .sharing import Sessions
    from .tensorboards import TensorBoards
    from .welcome import welcome

    web_app = serverapp.web_app
    # the lab opens files under hidden folders: a notebook job's output notebook is in
    # ~/.gpulab/jobs/ (the file browser still hides them until View > Show Hidden Files)
    serverapp.contents_manager.allow_hidden = True
    switch = KernelSwitch(serverapp)
    web_app.settings["gpulab_switch"] = switch
    web_app.settings["gpulab_hub_status"] = HubStatus()
    web_app.settings["gpulab_tensorboards"] = TensorBoards(
        serverapp.root_dir, web_app.settings["base_url"]
    )
    # cells sent while a switch moves the kernels wait for their variables to be back
    if not gate.install(serverapp, switch.gate):
        serverapp.log.warning(
            "gpulab: kernels are reached through %s: cells sent during Return or Get GPU "
            "are not held",
            web_app.settings.get("kernel_websocket_connection_class"),
        )
    # kept by the extension alone: kernels and terminals started from here do not inherit it
    web_app.settings[INTERNAL_SECRET_SETTING] = os.environ.pop(INTERNAL_SECRET_ENV, "")
    # a server that replaces a moved one (Return GPU on kubernetes) starts its notebooks
    # again, with their variables
    serverapp.io_loop.add_callback(switch.start_resume)
    # a guest's websockets are closed when the owner revokes their access
    web_app.settings["gpulab_sessions"] = sessions = Sessions()
    sessions.install()
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    welcome(Path(serverapp.root_dir), Path.home(), serverapp.log)
    serverapp.log.info(
        "gpulab: GPU return/get endpoints at %sgpulab/", web_app.settings["base_url"]
    )
