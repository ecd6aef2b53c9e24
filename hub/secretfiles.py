"""Secrets in settings: given inline, from the environment, or from root-only files.

Every secret setting (``SECRETS``) has a ``<name>_file`` sibling: the path of a file that
holds it, read when the hub starts (``read_secret_files``). On the local backend other
accounts share this machine's filesystem, so the hub refuses to start
(``exposed_secrets``) while a file that holds a secret, or that decides what the hub runs
as root, can be read or changed by anyone but the hub's own account (root). The same
list is ``gpulab doctor``'s "secrets" check.

On Kubernetes the files live in the hub's pod (a Secret mounted there), which no user
shares; what counts there is who may read the Secret or ConfigMap through the API
(docs/security.md).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from .settings import Settings, SettingsError

SECRETS = (
    ("hub", "admin_password"),
    ("storage", "s3_admin_access_key"),
    ("storage", "s3_admin_secret_key"),
    ("environments", "registry_password"),
)
"""(section, field) of each secret setting; each has a ``<field>_file`` beside it."""

DATA_SECRETS = ("cli-token", "jupyterhub_cookie_secret", "proxy-token")
"""Secrets the hub keeps in its data root: the CLI's admin token, the cookie secret, the
proxy's API token (kept so that a restarted hub can talk to the proxy that outlived it)."""


def read_secret_files(settings: Settings) -> None:
    """Fill each secret setting from its ``_file``, where one is given."""
    for section, name in SECRETS:
        part = getattr(settings, section)
        path = getattr(part, f"{name}_file")
        if not path:
            continue
        where = f"{section}.{name}"
        if getattr(part, name):
            raise SettingsError(f"{where} and {where}_file are both set: keep one")
        try:
            value = Path(path).read_text().strip()
        except OSError as e:
            raise SettingsError(f"{where}_file: cannot read {path}: {e.strerror}") from None
        if not value:
            raise SettingsError(f"{where}_file: {path} is empty")
        setattr(part, name, value)


def exposure(path: Path) -> str:
    """How another account could read or change ``path`` (``""``: it cannot): its
    owner is not this process's account, or its group or others have any access."""
    st = os.stat(path)  # a symbolic link's target is what gets read
    why = []
    if st.st_uid != os.geteuid():
        why.append(f"owned by uid {st.st_uid}")
    if st.st_mode & 0o077:
        why.append(f"mode {stat.S_IMODE(st.st_mode):04o}")
    return ", ".join(why)


def writable_by_others(path: Path) -> str:
    """How another account could change ``path``, a file the hub reads as root."""
    st = os.stat(path)
    why = []
    if st.st_uid not in (0, os.geteuid()):
        why.append(f"owned by uid {st.st_uid}")
    if st.st_mode & 0o022:
        why.append(f"mode {stat.S_IMODE(st.st_mode):04o}")
    return ", ".join(why)


def _fix(path: Path) -> str:
    owner = "root" if os.geteuid() == 0 else str(os.geteuid())
    return f"chown {owner} {path} && chmod 600 {path}"


def exposed_secrets(settings: Settings, config: Path | None) -> list[str]:
    """What other accounts on this machine could read or change, each with its fix."""
    found = []

    def check(path: Path, what: str, how=exposure, fix=None) -> None:
        try:
            why = how(path)
        except FileNotFoundError:
            return
        except OSError as e:
            found.append(f"{path} ({what}) cannot be checked: {e.strerror}")
            return
        if why:
            found.append(f"{path} holds {what} and is {why}: {fix or _fix(path)}")

    for section, name in SECRETS:
        path = getattr(getattr(settings, section), f"{name}_file")
        if path:
            check(Path(path), f"{section}.{name}")
    if config is not None and config.exists():
        inline = _inline_secrets(config)
        if inline:
            fields = ", ".join(inline)
            check(
                config,
                fields,
                fix=f"{_fix(config)}, or move them to {inline[0]}_file and the like",
            )
        check(config, "the hub's settings", writable_by_others, f"chmod go-w {config}")
    if settings.hub.extra_config:
        extra = Path(settings.hub.extra_config)
        check(
            extra, "configuration the hub runs as root", writable_by_others, f"chmod go-w {extra}"
        )
    if settings.storage.ceph_keyring:
        check(Path(settings.storage.ceph_keyring), "the hub's Ceph key")
    for name in DATA_SECRETS:
        check(settings.data_path / name, "a hub secret")
    return found


def _inline_secrets(config: Path) -> list[str]:
    """The secret settings written out in the settings file itself."""
    try:
        raw = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []  # load_settings has said what is wrong with it
    if not isinstance(raw, dict):
        return []
    return [
        f"{section}.{name}"
        for section, name in SECRETS
        if isinstance(raw.get(section), dict) and raw[section].get(name)
    ]


def refuse_exposed_secrets(settings: Settings, config: Path | None) -> None:
    """Stop a hub whose machine users share (the local backend) while other accounts can
    read its secrets."""
    found = exposed_secrets(settings, config)
    if found:
        raise SettingsError(
            "other accounts on this machine can read or change the hub's secrets; fix "
            "this first:\n  " + "\n  ".join(found)
        )
