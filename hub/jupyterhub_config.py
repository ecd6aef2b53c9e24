# The embedded-default gpulab hub: every setting comes from gpulab.yaml / GPULAB_* (docs/configuration.md).
from gpulab.hub.hubconfig import configure_hub

configure_hub(c)  # noqa: F821 (c is provided by JupyterHub)
