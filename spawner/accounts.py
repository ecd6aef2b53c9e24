"""Unix accounts and home directories for the local backend.

When the hub runs as root, each hub user's server runs as a unix account of its
own (``gl-alice``), created on first spawn, with a 0700 home under the data root.
Run unprivileged, every server runs as the hub's own account (single-user/dev mode).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpulab.hub.names import NameConflict, home_name, made_for, made_for_another
from gpulab.hub.storage import StorageError

from .userenv import LAYERS

if TYPE_CHECKING:
    from gpulab.hub.environments.manager import Prepared

    from .userenv import UserEnvironment

MAX_UNIX_NAME = 32


class AccountError(RuntimeError):
    """The unix account or home could not be set up; the message says why."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: Path
    shell: str = "/bin/bash"


def unix_name(prefix: str, base: str) -> str:
    """The unix account for the name the registry recorded for a hub user (``home_name``):
    the prefix and that name."""
    name = f"{prefix}{base}"
    if len(name) > MAX_UNIX_NAME:
        raise AccountError(
            f"unix account name {name!r} is too long; shorten servers.unix_user_prefix"
        )
    return name


def account_uid(prefix: str, hub_name: str, data_root: Path) -> int | None:
    """The uid of the account a hub user's processes run as, if it exists (made by
    ``ensure_account``; nothing is created here)."""
    if not privileged():
        return os.geteuid()
    try:
        return pwd.getpwnam(unix_name(prefix, home_name(data_root, hub_name))).pw_uid
    except (KeyError, NameConflict, AccountError):
        return None


def privileged() -> bool:
    return os.geteuid() == 0


def home_for(data_root: Path, hub_name: str) -> Path:
    """The user's home, by the name recorded for them (``NameConflict`` if it is taken)."""
    return data_root / "homes" / home_name(data_root, hub_name)


def prepare_data_root(data_root: Path) -> None:
    """Data root and homes/: traversable by users, listable by the hub only."""
    for d in (data_root, data_root / "homes", data_root / "logs"):
        d.mkdir(parents=True, exist_ok=True)
    if privileged():
        os.chmod(data_root, 0o711)
        os.chmod(data_root / "homes", 0o711)
        os.chmod(data_root / "logs", 0o700)


def ensure_account(prefix: str, hub_name: str, data_root: Path, prepare_home=None) -> Account:
    """The account a user's server runs as, with its home; created when missing.

    ``prepare_home(hub_name, uid, gid)``, when given, makes the home's place before it
    is used (``LocalHomes.ensure``: a home with a quota is a mounted filesystem).

    Two hub names never get one account: the name is claimed in the registry first, and
    an existing account made for another hub user (its comment names them) is refused."""
    try:
        base = home_name(data_root, hub_name)
    except NameConflict as e:
        raise AccountError(str(e), status=409) from None
    home = data_root / "homes" / base
    if not privileged():
        home.mkdir(parents=True, exist_ok=True)
        me = pwd.getpwuid(os.geteuid())
        return Account(me.pw_name, me.pw_uid, me.pw_gid, home, me.pw_shell or "/bin/bash")

    name = unix_name(prefix, base)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            [
                "useradd",
                "--home-dir",
                str(home),
                "--no-create-home",
                "--shell",
                "/bin/bash",
                "--user-group",
                "--comment",
                made_for(hub_name),
                name,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode not in (0, 9):  # 9: created meanwhile by a concurrent spawn
            raise AccountError(
                f"could not create unix account {name}: {result.stderr.strip()}"
            ) from None
        entry = pwd.getpwnam(name)
    if made_for_another(entry.pw_gecos, hub_name):
        # made for another hub name (before the registry, or its database was replaced)
        raise AccountError(
            f"the unix account {name} belongs to another hub user; refusing to share it "
            f"with {hub_name!r}",
            status=409,
        )
    if entry.pw_uid == 0:
        raise AccountError(f"refusing to run a user server as root (account {name})")
    if prepare_home is not None:
        try:
            prepare_home(hub_name, entry.pw_uid, entry.pw_gid)
        except StorageError as e:
            raise AccountError(f"could not prepare the home of {hub_name}: {e}") from e
    try:
        home.mkdir(parents=True, exist_ok=True)
        st = home.lstat()
        if home.is_symlink():
            raise AccountError(f"home {home} is a symbolic link; refusing to use it")
        if st.st_uid != entry.pw_uid or st.st_gid != entry.pw_gid:
            os.chown(home, entry.pw_uid, entry.pw_gid)
        os.chmod(home, 0o700)
    except OSError as e:
        raise AccountError(f"could not prepare home {home}: {e.strerror}") from e
    return Account(name, entry.pw_uid, entry.pw_gid, home, entry.pw_shell or "/bin/bash")


def _without_gpulab(path: str) -> list[str]:
    """The folders of ``path`` (the hub's own PATH) but gpulab's environment's."""
    own = os.path.join(sys.prefix, "bin")
    return [p for p in path.split(os.pathsep) if p and os.path.normpath(p) != own]


def account_env(
    account: Account,
    environment: UserEnvironment,
    path: str | None = None,
    userbase: str = ".local",
    layers: Prepared | None = None,
) -> dict[str, str]:
    """What a process of the user's (server, job replica) runs with: their account and
    home; on PATH, the commands they installed with pip --user (in ``userbase``, relative
    to the home), then those of the snapshot ``layers`` it starts from, then their
    environment's (python, pip, tensorboard, gpulab), never gpulab's own."""
    home = str(account.home)
    env = {
        "USER": account.name,
        "LOGNAME": account.name,
        "HOME": home,
        "SHELL": account.shell,
        "PYTHONUSERBASE": os.path.join(home, userbase),
        "PATH": os.pathsep.join(
            [
                os.path.join(home, userbase, "bin"),
                *(str(d) for d in (layers.bin_dirs if layers else [])),
                *environment.bin_dirs,
                *_without_gpulab(path or "/usr/local/bin:/usr/bin:/bin"),
            ]
        ),
        "JUPYTERLAB_WORKSPACES_DIR": os.path.join(home, ".jupyter", "lab", "workspaces"),
    }
    if layers is not None:
        env[LAYERS] = os.pathsep.join(str(d) for d in layers.site_dirs)
        env["GPULAB_ENVIRONMENT"] = layers.environment.ref
    return env
