"""The local workload runner: a job's replicas as processes on this machine.

Each replica runs as its user's unix account (when the hub is root), in a session of its
own so that stopping it ends everything it started, with a clean environment (nothing of
the hub's), from a directory of the user's home. Its output goes to a log file on the
home that the replica itself opens once it runs as the user, so a log path the user
turned into a link cannot make the hub write elsewhere; the hub reads logs back through
``open_in_home``, which never follows a link.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jupyterhub.spawner import set_user_setuid

from gpulab.hub.workloads.runner import Launch

from .accounts import Account, account_env, ensure_account, prepare_data_root, privileged
from .local import holder_alive, process_start_time

# variables a replica keeps from the hub's environment: locale and time zone only
KEEP_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass
class Started:
    pid: int
    pid_started: str | None
    process: asyncio.subprocess.Process | None

    async def wait(self) -> int:
        """The process's return code once it ends (negative: killed by that signal)."""
        if self.process is not None:
            return await self.process.wait()
        while holder_alive(self.pid, self.pid_started):  # not our child: poll
            await asyncio.sleep(0.2)
        return -signal.SIGKILL


class LocalRunner:
    """Starts, stops and reads the logs of processes of a user's workloads."""

    def __init__(self, settings):
        self.settings = settings

    def account(self, user: str) -> Account:
        s = self.settings
        prepare_data_root(s.data_path)
        return ensure_account(s.servers.unix_user_prefix, user, s.data_path)

    def base_env(self, user: str) -> dict[str, str]:
        env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
        env.update(account_env(self.account(user)))
        return env

    def home(self, user: str) -> Path:
        return self.account(user).home

    async def start(self, user: str, launch: Launch) -> Started:
        """Start ``launch`` as ``user``; OSError when it cannot even begin."""
        account = self.account(user)
        preexec = _preexec(account, launch)
        # a shell execs the command, so one that is missing ends with the shell's own
        # message in the log and exit code 127, as in a terminal
        argv = ["/bin/sh", "-c", 'exec "$@"', "sh", *launch.argv]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=launch.env,
                cwd=str(account.home),
                stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=preexec,
                start_new_session=True,
                close_fds=True,
            )
        except Exception as e:  # SubprocessError from the child's preparation
            raise OSError(f"could not start {launch.argv[0]}: {e}") from None
        return Started(process.pid, process_start_time(process.pid), process)

    def adopt(self, pid: int | None, pid_started: str | None) -> Started | None:
        """A replica started by an earlier hub process, if it still runs."""
        if pid and holder_alive(pid, pid_started):
            return Started(pid, pid_started, None)
        return None

    async def stop(self, started: Started, grace: float) -> None:
        """TERM the replica's whole session, then KILL what is left after ``grace``."""
        if not holder_alive(started.pid, started.pid_started):
            await _reap(started)
            return
        _signal_group(started.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if started.process is not None and started.process.returncode is not None:
                break
            if not _group_alive(started.pid):
                break
            await asyncio.sleep(0.05)
        _signal_group(started.pid, signal.SIGKILL)
        await _reap(started)

    def read_log(self, user: str, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        """Up to ``limit`` bytes of a log on the user's home from ``offset`` (b"" if none)."""
        try:
            fd = open_in_home(self.home(user), path)
        except FileNotFoundError:
            return b""
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, limit)
        finally:
            os.close(fd)


def _preexec(account: Account, launch: Launch):
    become = set_user_setuid(account.name) if privileged() else None
    log_dir, _, _ = launch.log.rpartition("/")
    header = launch.header.encode() + b"\n" if launch.header else b""

    def preexec():
        if become is not None:
            become()
        os.chdir(account.home)
        if log_dir:
            os.makedirs(log_dir, mode=0o700, exist_ok=True)
        fd = os.open(launch.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        if header:
            os.write(1, header)
        if launch.workdir:
            try:
                os.chdir(launch.workdir)
            except OSError as e:
                os.write(2, f"gpulab: cannot enter ~/{launch.workdir}: {e.strerror}\n".encode())
                os._exit(2)

    return preexec


def open_in_home(home: Path, relative: str) -> int:
    """A read-only descriptor of a regular file under ``home``, never through a link.

    Every directory on the way is opened with O_NOFOLLOW, so a user who replaces part of
    the path with a link to a file of someone else's cannot make the hub read it.
    """
    parts = [p for p in relative.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise FileNotFoundError(relative)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(home, flags | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            except OSError as e:
                raise FileNotFoundError(relative) from e
            os.close(fd)
            fd = nxt
        try:
            out = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                raise FileNotFoundError(relative) from e
            raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(out).st_mode):
        os.close(out)
        raise FileNotFoundError(relative)
    return out


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


async def _reap(started: Started) -> None:
    if started.process is not None:
        try:
            await asyncio.wait_for(started.process.wait(), 5)
        except TimeoutError:
            pass


def python() -> str:
    """The interpreter replicas run ``python`` with: the one gpulab is installed in."""
    return os.path.join(sys.prefix, "bin", "python")
