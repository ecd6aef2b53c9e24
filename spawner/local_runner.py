"""The local workload runner: a job's replicas as processes on this machine.

Each replica runs as its user's unix account (when the hub is root), in a session of its
own so that stopping it ends everything it started, with a clean environment (nothing of
the hub's), from a directory of the user's home. Its output goes to a log file on the
home that the replica's shell opens once it runs as the user, so a log path the user
turned into a link cannot make the hub write elsewhere; the hub reads logs back, and
writes model configs, only through ``gpulab.hub.homefs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpulab.hub import homefs
from gpulab.hub.storage.local import local_homes
from gpulab.hub.workloads.runner import Launch

from .accounts import Account, account_env, ensure_account, prepare_data_root, privileged
from .local import holder_alive, process_start_time
from .userenv import user_environment

# variables a replica keeps from the hub's environment: locale and time zone only
KEEP_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass
class Started:
    pid: int
    pid_started: str | None
    process: asyncio.subprocess.Process | None
    exit_code: Callable[[], int | None] | None = None
    """For a process an earlier hub started: reads the code its shell wrote on exit."""

    async def wait(self) -> int:
        """The process's return code once it ends (negative: killed by that signal)."""
        if self.process is not None:
            return await self.process.wait()
        while holder_alive(self.pid, self.pid_started):  # not our child: poll
            await asyncio.sleep(0.2)
        code = self.exit_code() if self.exit_code is not None else None
        return -signal.SIGKILL if code is None else code


class LocalRunner:
    """Starts, stops and reads the logs of processes of a user's workloads."""

    def __init__(self, settings):
        self.settings = settings

    def account(self, user: str) -> Account:
        s = self.settings
        prepare_data_root(s.data_path)
        return ensure_account(
            s.servers.unix_user_prefix, user, s.data_path, prepare_home=local_homes(s).ensure
        )

    def base_env(self, user: str, layers=None) -> dict[str, str]:
        env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
        userbase = layers.userbase if layers else ".local"
        account = self.account(user)
        env.update(account_env(account, user_environment(self.settings), None, userbase, layers))
        return env

    def home(self, user: str) -> Path:
        return self.account(user).home

    def listen_dir(self, user: str) -> tuple[Path, int]:
        """(the folder the user's model servers put their unix sockets in, the uid that
        must listen there): ``<data root>/serving/<account>``, the user's and 0700, in a
        folder of root's that only root can list, so no other account can bind, replace
        or reach a socket there."""
        account = self.account(user)
        parent = self.settings.data_path / "serving"
        parent.mkdir(exist_ok=True)
        folder = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
        top = os.open(parent, folder)
        try:
            if privileged():
                os.fchown(top, 0, 0)
                os.fchmod(top, 0o711)
            with contextlib.suppress(FileExistsError):
                os.mkdir(account.name, 0o700, dir_fd=top)
            fd = os.open(account.name, folder, dir_fd=top)
        finally:
            os.close(top)
        try:
            if privileged():
                os.fchown(fd, account.uid, account.gid)
            os.fchmod(fd, 0o700)  # again at every start: the owner may have opened it
        finally:
            os.close(fd)
        return parent / account.name, account.uid

    def host(self, group: str, name: str) -> str:
        return "127.0.0.1"  # every process listens on a loopback port of its own

    async def open_group(self, user: str, group: str, env: dict[str, str]) -> None:
        """Nothing to share: the processes are on this machine."""

    async def close_group(self, user: str, group: str) -> None:
        """Nothing was made for the group."""

    async def start(self, user: str, launch: Launch) -> Started:
        """Start ``launch`` as ``user``; OSError when it cannot even begin.

        A shell, already the user, appends its output to the log, writes the header,
        enters the working folder, runs the command and writes its exit code beside the
        log: a missing command ends with the shell's own message in the log and exit
        code 127, as in a terminal. No Python runs between fork and exec, which keeps a
        start to a few milliseconds.
        """
        account = self.account(user)
        log_dir = launch.log.rpartition("/")[0]
        if log_dir:
            try:
                homefs.make_dirs(account.home, log_dir, account.uid, account.gid)
            except OSError as e:
                raise OSError(
                    f"could not start: cannot make its log folder ~/{log_dir} ({e.strerror})"
                ) from None
        status = str(account.home / exit_file(launch.log))
        argv = ["/bin/sh", "-c", LAUNCH_SCRIPT, "sh", launch.log, launch.header, launch.workdir]
        argv.append(status)
        ids = {}
        if privileged():
            ids = dict(
                user=account.uid,
                group=account.gid,
                extra_groups=os.getgrouplist(account.name, account.gid),
            )
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                *launch.argv,
                env=launch.env,
                cwd=str(account.home),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                **ids,
            )
        except OSError as e:
            raise OSError(f"could not start {launch.argv[0]}: {e}") from None
        return Started(process.pid, process_start_time(process.pid), process)

    def adopt(self, user: str, log: str, pid: int | None, pid_started: str | None) -> Started:
        """A replica an earlier hub process started (with ``log``), running or ended: its
        ``wait`` gives the exit code its shell wrote, or SIGKILL's when it wrote none."""

        def exit_code() -> int | None:
            text = self.read_log(user, exit_file(log), 0, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None

        return Started(pid or 0, pid_started, None, exit_code)

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

    def write_file(self, user: str, path: str, data: bytes) -> None:
        """Put ``data`` in a file of the user's home (replaced whole, never through a link),
        owned by the user, readable only by them."""
        account = self.account(user)
        homefs.write(account.home, path, data, account.uid, account.gid)

    def list_dir(self, user: str, path: str) -> list[str]:
        """The names in a folder of the user's home; FileNotFoundError if it is not one
        (or lies behind a link)."""
        return homefs.list_dir(self.home(user), path)

    def is_file(self, user: str, path: str) -> bool:
        return homefs.is_file(self.home(user), path)

    def read_log(self, user: str, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        """Up to ``limit`` bytes of a log on the user's home from ``offset`` (b"" if none,
        or if it is not the user's own regular file)."""
        account = self.account(user)
        return homefs.read(account.home, path, offset, limit, owner=account.uid)


# $1 log, $2 header, $3 working folder (relative to the home), $4 where the exit code
# goes (so a later hub learns how a replica it did not start ended), then the command.
# The hub's TERM (to the whole group) lets the command end; the shell then says so.
# With $GPULAB_METRICS_READER (the source of gpulab.hub.workloads.tfevents, kept from the
# command's environment), the shell reads the job's TensorBoard scalars after the
# command, still as the user, unless the hub stopped it.
LAUNCH_SCRIPT = """exec >>"$1" 2>&1 || exit 2
: >"$4"
[ -z "$2" ] || printf '%s\\n' "$2"
if [ -n "$3" ]; then cd -- "$3" || { echo "gpulab: cannot enter ~/$3"; exit 2; }; fi
status=$4
shift 4
reader=$GPULAB_METRICS_READER
unset GPULAB_METRICS_READER
trap 'stopped=1' TERM
"$@"
code=$?
if [ -n "$reader" ] && [ -z "$stopped" ]; then
  if command -v python3 >/dev/null 2>&1; then python3 -c "$reader"
  else echo "==> gpulab: no python3 here: the TensorBoard metrics under $GPULAB_METRICS_EVENTS were not read"; fi
fi
printf '%s\\n' "$code" >"$status"
[ -z "$stopped" ] || printf '%s\\n' "==> gpulab: stopped by the hub (SIGTERM; exit code $code): its status at the hub says why"
exit "$code"
"""


def exit_file(log: str) -> str:
    """Where the shell of the process logging to ``log`` writes its exit code."""
    return log.removesuffix(".log") + ".exit"


_DIR = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


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


def gpulab_python() -> str:
    """The interpreter gpulab is installed in: model replicas run gpulab's model server
    with it (job replicas run the user environment's)."""
    return os.path.join(sys.prefix, "bin", "python")
