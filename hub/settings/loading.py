"""Loading the settings: the file, the ``GPULAB_*`` overrides, and validation.

``load_settings`` reads the YAML file ``config_path`` finds, builds the dataclasses of
:mod:`.sections` from it (``_build`` and ``_coerce`` take the forms a person writes:
numbers as text, comma-separated lists, ``key=value`` mappings), applies the environment
overrides (``_apply_env``) and checks what the types alone do not (``_validate``); each
refusal is a ``SettingsError`` that names the setting.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path

import yaml

from .sections import Settings
from .units import SettingsError

ENV_PREFIX = "GPULAB_"


def config_path(environ: typing.Mapping[str, str] | None = None) -> Path | None:
    environ = os.environ if environ is None else environ
    if environ.get("GPULAB_CONFIG"):
        return Path(environ["GPULAB_CONFIG"])
    for candidate in (Path("gpulab.yaml"), Path("/etc/gpulab/gpulab.yaml")):
        if candidate.exists():
            return candidate
    return None


def load_settings(
    path: str | Path | None = None, environ: typing.Mapping[str, str] | None = None
) -> Settings:
    """Read the settings file (if any), apply environment overrides, validate."""
    environ = os.environ if environ is None else environ
    path = Path(path) if path else config_path(environ)
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise SettingsError(f"cannot read settings file {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise SettingsError(f"settings file {path} is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise SettingsError(f"settings file {path} must hold a mapping at the top")
    settings = _build(Settings, raw, "")
    _apply_env(settings, environ)
    _validate(settings)
    return settings


def _build(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise SettingsError(f"{where or 'settings'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise SettingsError(
            f"{where or 'settings'}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise SettingsError(f"{where or 'settings'}: {e}") from e


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or str(value).lower() in ("", "null", "none"):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where + ".")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise SettingsError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, vt = typing.get_args(tp)
        if isinstance(value, str):
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise SettingsError(f"{where}: expected key=value pairs, got {value!r}")
            value = {k.strip(): v.strip() for k, v in pairs}
        if not isinstance(value, dict):
            raise SettingsError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise SettingsError(f"{where}: expected a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{where}: expected a whole number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise SettingsError(f"{where}: expected text, got {value!r}")
        return "" if value is None else str(value)
    return value


def _apply_env(obj, environ, prefix: str = ENV_PREFIX) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        name = prefix + f.name.upper()
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            _apply_env(getattr(obj, f.name), environ, name + "__")
        elif name in environ and f.name != "profiles":
            setattr(obj, f.name, _coerce(tp, environ[name], name))


# -- validation ------------------------------------------------------------------------


def _validate(s: Settings) -> None:
    if s.backend not in ("local", "kubernetes"):
        raise SettingsError(f"backend: unknown backend {s.backend!r}; known: local, kubernetes")
    if s.backend == "kubernetes" and not s.kubernetes.image:
        raise SettingsError(
            "kubernetes.image: the notebook image must be set with the kubernetes backend"
        )
    for name in ("unschedulable_timeout", "delete_grace_period"):
        if getattr(s.kubernetes, name) < 0:
            raise SettingsError(f"kubernetes.{name}: must be 0 seconds or more")
    if not s.profiles:
        raise SettingsError("profiles: at least one profile is needed")
    slugs = [p.slug for p in s.profiles]
    dupes = {x for x in slugs if slugs.count(x) > 1}
    if dupes:
        raise SettingsError(f"profiles: duplicate slug(s) {', '.join(sorted(dupes))}")
    for p in s.profiles:
        if p.gpus < 0:
            raise SettingsError(f"profiles.{p.slug}.gpus: must be 0 or more, got {p.gpus}")
        if not p.display_name:
            p.display_name = p.slug
    if sum(p.default for p in s.profiles) > 1:
        raise SettingsError("profiles: only one profile may be the default")
    if len(set(s.gpus.ids)) != len(s.gpus.ids):
        raise SettingsError("gpus.ids: the same device id is listed twice")
    for p in s.profiles:
        p.idle_return_seconds  # noqa: B018 -- raises SettingsError when malformed
        _validate_tolerations(p.tolerations, f"profiles.{p.slug}.tolerations")
    _validate_tolerations(s.kubernetes.gpu_tolerations, "kubernetes.gpu_tolerations")
    s.gpus.idle_return_when_queued_seconds  # noqa: B018 -- raises SettingsError when malformed
    for name in ("acquire_timeout", "reclaim_interval"):
        if getattr(s.gpus, name) < 1:
            raise SettingsError(f"gpus.{name}: must be 1 second or more")
    if not 1 <= s.gpus.checkpoint_generations <= 100:
        raise SettingsError("gpus.checkpoint_generations: 1 to 100 checkpoints per notebook")
    if not 0 <= s.gpus.idle_utilization <= 100:
        raise SettingsError("gpus.idle_utilization: a percentage, 0 to 100")
    if s.gpus.kernel_checkpoint not in ("auto", "driver", "namespace"):
        raise SettingsError(
            f"gpus.kernel_checkpoint: auto, driver or namespace, not {s.gpus.kernel_checkpoint!r}"
        )
    for name, n in {**s.gpus.users, **s.gpus.groups}.items():
        if n < 0:
            raise SettingsError(f"gpus: the limit for {name!r} must be 0 or more, got {n}")
    s.storage.home_size_bytes, s.storage.home_max_size_bytes, s.storage.s3_quota_bytes  # noqa: B018
    st = s.storage
    if st.s3_endpoint and not (
        (st.s3_admin_access_key or st.s3_admin_access_key_file)
        and (st.s3_admin_secret_key or st.s3_admin_secret_key_file)
    ):
        raise SettingsError(
            "storage: s3_endpoint needs s3_admin_access_key and s3_admin_secret_key "
            "(or their _file settings)"
        )
    s.jobs.restart_backoff_seconds, s.jobs.stop_grace_seconds  # noqa: B018
    if s.jobs.log_copy_limit_bytes < 2**20:
        raise SettingsError("jobs.log_copy_limit: at least 1MiB")
    s.serving.poll_seconds, s.serving.start_timeout_seconds  # noqa: B018
    if not 1 <= s.serving.max_replicas <= 64:
        raise SettingsError("serving.max_replicas: from 1 to 64")
    if not 60 <= s.sharing.max_expiry_seconds <= 365 * 86400:
        raise SettingsError("sharing.max_expiry: from 60s to 365d")
    if not s.hub.admin_users:
        raise SettingsError("hub.admin_users: at least one admin is needed")


_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def _validate_tolerations(tolerations: list, field_name: str) -> None:
    for i, t in enumerate(tolerations):
        where = f"{field_name}[{i}]"
        if not isinstance(t, dict):
            raise SettingsError(f"{where}: expected a mapping, got {t!r}")
        unknown = set(t) - _TOLERATION_KEYS
        if unknown:
            raise SettingsError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(_TOLERATION_KEYS))}"
            )
        if t.get("operator", "Equal") not in ("Equal", "Exists"):
            raise SettingsError(f"{where}.operator: Equal or Exists, got {t['operator']!r}")
        if t.get("effect", "") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise SettingsError(
                f"{where}.effect: NoSchedule, PreferNoSchedule or NoExecute, got {t['effect']!r}"
            )
        seconds = t.get("tolerationSeconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
            raise SettingsError(f"{where}.tolerationSeconds: a whole number, got {seconds!r}")
