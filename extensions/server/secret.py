"""The secret the hub proves itself with on the server's internal API
(``gpulab/internal/*``): made by the spawner for this one server and passed in its
environment, never a token that is good at the hub, since the server process is the
user's and sees every header it is sent. The spawner and the hub's calls import these
names from the package (``gpulab.extensions.server``), which reads the secret at load;
``handlers.py`` checks it.
"""

from __future__ import annotations

INTERNAL_SECRET_ENV = "GPULAB_INTERNAL_SECRET"
"""The environment variable the spawner puts the server's secret in."""
INTERNAL_SECRET_HEADER = "X-Gpulab-Internal-Secret"
"""The request header the hub sends it in."""
INTERNAL_SECRET_SETTING = "gpulab_internal_secret"
"""Where the extension keeps it, in the web application's settings."""
