"""gpulab settings: one YAML file plus ``GPULAB_*`` environment overrides.

The file is found at ``$GPULAB_CONFIG``, else ``./gpulab.yaml``, else
``/etc/gpulab/gpulab.yaml``; with none of them the defaults in :mod:`.sections` apply.

Every field can be overridden from the environment: ``GPULAB_`` followed by the
field's path in upper case with ``__`` between levels, for example
``GPULAB_DATA_ROOT=/srv/gpulab``, ``GPULAB_HUB__PORT=8080``,
``GPULAB_GPUS__IDS=0,1``. Lists are comma-separated; mappings are written as
``key=value,key=value``.

- :mod:`.sections`: the settings dataclasses, each field documented under it;
- :mod:`.units`: sizes and durations (``parse_size``, ``parse_duration``,
  ``format_size``) and ``SettingsError``;
- :mod:`.loading`: ``load_settings``: the file, the overrides, validation.
"""

from .loading import config_path, load_settings
from .sections import GpuSettings, KubernetesSettings, Profile, Settings
from .units import SettingsError, format_size, parse_duration, parse_size

__all__ = [
    "GpuSettings",
    "KubernetesSettings",
    "Profile",
    "Settings",
    "SettingsError",
    "config_path",
    "format_size",
    "load_settings",
    "parse_duration",
    "parse_size",
]
