"""The gpulab Jupyter server extension: GPU state, Return GPU / Get GPU, kernel checkpoints.

Enabled for every server of the environment by
``etc/jupyter/jupyter_server_config.d/gpulab.json``.
"""

from __future__ import annotations


def _jupyter_server_extension_points():
    return [{"module": "gpulab.extensions.server"}]


def _load_jupyter_server_extension(serverapp):
    from .handlers import handlers
    from .kernels import KernelSwitch

    web_app = serverapp.web_app
    switch = KernelSwitch(serverapp)
    web_app.settings["gpulab_switch"] = switch
    # a server that replaces a moved one (Return GPU on kubernetes) starts its notebooks
    # again, with their variables
    serverapp.io_loop.add_callback(switch.start_resume)
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.log.info(
        "gpulab: GPU return/get endpoints at %sgpulab/", web_app.settings["base_url"]
    )
