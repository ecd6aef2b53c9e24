"""LocalGpuSpawner: a user's server as a process tree on this machine.

Each server runs as its user's unix account (when the hub is root), in a 0700 home
under the data root, with CUDA_VISIBLE_DEVICES set to exactly the GPUs the ledger
granted. The process outlives the hub: after a hub restart the spawner re-attaches
by pid, and grants of servers that died meanwhile are released.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid
from jupyterhub.utils import AnyTimeoutError, url_path_join, wait_for_http_server
from tornado import web
from traitlets import default

from gpulab.hub import homefs
from gpulab.hub.storage.local import local_homes
from gpulab.hub.workloads.runner import WorkloadError

from .accounts import (
    Account,
    AccountError,
    account_env,
    account_uid,
    ensure_account,
    prepare_data_root,
)
from .base import GpuSpawnerMixin
from .userenv import user_environment


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell reused pids apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: count fields after its closing paren
    return stat.rsplit(")", 1)[1].split()[19]


def holder_alive(pid: int | None, started: str | None) -> bool:
    """Is the process that took a grant still the same live process?"""
    if not pid:
        return False
    now = process_start_time(pid)
    return now is not None and (started is None or now == started)


def listener_uids(port: int) -> set[int]:
    """The accounts whose sockets listen on TCP ``port`` (any address, IPv4 or IPv6)."""
    uids = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local address as HEXIP:HEXPORT, state 0A is LISTEN, then the owner's uid
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                uids.add(int(fields[7]))
    return uids


class LocalGpuSpawner(GpuSpawnerMixin, LocalProcessSpawner):
    """Spawn each user's JupyterLab as a local process with the GPUs the ledger grants."""

    @default("cmd")
    def _cmd_default(self):
        # jupyterhub-singleuser of the environment gpulab is installed in (not whatever is
        # first on PATH), through gpulab's command, which starts it a second sooner (a
        # script, so the user's home, its working directory, is not on its import path)
        return [os.path.join(sys.prefix, "bin", "gpulab-singleuser")]

    @property
    def account(self) -> Account:
        if getattr(self, "_account", None) is None:
            s = self.gpulab.settings
            prepare_data_root(s.data_path)
            self._account = ensure_account(
                s.servers.unix_user_prefix,
                self.user.name,
                s.data_path,
                prepare_home=local_homes(s).ensure,
            )
        return self._account

    def make_preexec_fn(self, name):
        account = self.account
        if os.geteuid() == 0:
            return set_user_setuid(account.name)
        return lambda: os.chdir(account.home)

    def user_env(self, env):
        environment = user_environment(self.gpulab.settings)
        layers = getattr(self, "_layers", None)
        userbase = layers.userbase if layers else ".local"
        env.update(account_env(self.account, environment, env.get("PATH"), userbase, layers))
        env.update(environment.env())
        # the server itself never loads the user's own packages (pip install --user):
        # gpulab-singleuser takes this out of its environment as it starts, so its kernels
        # and terminals have them
        env["PYTHONNOUSERSITE"] = "1"
        return env

    def get_args(self):
        args = super().get_args()
        # JupyterLab terminals: an interactive (not a login) shell, as in Jupyter's own
        # images: a login shell's /etc/profile would reset PATH and hide the server's
        # environment (tensorboard, gpulab, pip --user commands) from the terminal
        shell = json.dumps({"shell_command": [self.account.shell]})
        return [*args, f"--ServerApp.terminado_settings={shell}"]

    def get_env(self):
        env = super().get_env()
        env.update(self.gpu_env())
        env.update(self.tensorboard_env())
        env.update(getattr(self, "_storage_env", {}))
        profile = self.gpulab.settings.profile(self.profile_slug or None)
        env.update(profile.env)
        return env

    def impostor(self) -> str:
        # a port is anyone's to take once the server is gone: the listener must be the
        # user's own account before the hub sends it anything
        port = self.server.port if self.server else 0
        if not port:
            return ""
        s = self.gpulab.settings
        # looked up, not ensure_account: this runs at every idle poll and must make nothing
        uid = account_uid(s.servers.unix_user_prefix, self.user.name, s.data_path)
        others = listener_uids(port) - {uid}
        if others:
            return f"port {port} is held by another account (uid {', '.join(map(str, others))})"
        return ""

    def _log_file(self):
        """The server's output goes to a root-owned log under the data root."""
        logs = self.gpulab.settings.data_path / "logs"
        suffix = f"-{self.name}" if self.name else ""
        path = logs / f"{self.account.name}{suffix}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        return os.fdopen(fd, "ab", buffering=0)

    async def start(self):
        request = self.reserve_gpus()
        try:
            self._storage_env = await self.storage_env()
            self._account = None  # made again: the home may need mounting (storage.home_quota)
            try:  # off the event loop: it may make and mount the home's filesystem
                account = await asyncio.to_thread(lambda: self.account)
            except AccountError as e:
                raise web.HTTPError(
                    e.status, f"Cannot prepare {self.user.name}'s account: {e}"
                ) from None
            self._layers = await self._start_from(request.environment, account)
            self.report(30, f"Starting JupyterLab as {account.name} in {account.home}")
            log, configured = self._log_file(), self.popen_kwargs
            try:
                self.popen_kwargs = {**configured, "stdout": log, "stderr": log}
                ip, port = await super().start()
            finally:
                self.popen_kwargs = configured  # the child holds its own copy of the file
                log.close()
            self.gpulab.ledger.attach(
                self.user.name, self.name, self.pid, process_start_time(self.pid)
            )
            self._record_start(ip, port)
            self.report(60, "Server process started; waiting for it to answer")
            await self._until_listening(ip, port)
            return ip, port
        except BaseException:
            self.release_gpus("spawn failed")
            raise

    async def _start_from(self, ref: str, account: Account):
        """The snapshot ``ref``'s layers, unpacked, and the user's own layer over it made
        (their ``pip install --user`` in such a server goes there); None without one."""
        if not ref:
            return None
        groups = [g.name for g in self.user.groups]
        try:
            prepared = await self.gpulab.environments.prepare(
                self.user.name, groups, ref, lambda message: self.report(20, message)
            )
            await asyncio.to_thread(
                homefs.make_dirs, account.home, prepared.userbase, account.uid, account.gid
            )
        except WorkloadError as e:
            self.report(100, f"Spawn failed: {e}")
            raise web.HTTPError(e.status, str(e)) from None
        except OSError as e:  # the home holds something else where the folder goes
            message = f"cannot make ~/{prepared.userbase} for the environment's packages: {e}"
            self.report(100, f"Spawn failed: {message}")
            raise web.HTTPError(409, message) from None
        self.report(25, f"Starting from environment {prepared.environment.ref}")
        return prepared

    async def _until_listening(self, ip: str, port: int, every: float = 0.05) -> None:
        """Return once the server accepts connections on its port, or its process ended,
        or ``start_timeout`` passed. JupyterHub then checks it over HTTP: with its back-off
        (0.2 s, doubling) a server that starts in 1.5 s was called ready only at its
        fourth look, half a second late; its first look now finds it up."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and self._process_runs():
            try:
                _, writer = await asyncio.open_connection(ip or "127.0.0.1", port)
            except OSError:
                await asyncio.sleep(every)
                continue
            writer.close()
            return

    def _process_runs(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def gpus_changed(self, ids: list[str]) -> None:
        super().gpus_changed(ids)
        if ids and self.pid:
            self.gpulab.ledger.attach(
                self.user.name, self.name, self.pid, process_start_time(self.pid)
            )

    def start_polling(self) -> None:
        """JupyterHub's periodic poll (every 30 s), and a watch on the server's process
        that notices its end at once, so a dead server's GPUs are free within a moment."""
        super().start_polling()
        self._watch_exit()

    def stop_polling(self) -> None:
        super().stop_polling()
        self._unwatch_exit()

    def _watch_exit(self) -> None:
        self._unwatch_exit()
        if not self.pid:
            return
        try:  # readable once the process has ended (a pidfd stays with its process)
            fd = os.pidfd_open(self.pid)
        except OSError:  # gone already: the poll that follows notices
            asyncio.ensure_future(self.poll_and_notify())
            return
        loop = asyncio.get_running_loop()

        def ended() -> None:
            self._unwatch_exit()
            asyncio.ensure_future(self.poll_and_notify())

        loop.add_reader(fd, ended)
        self._exit_watch = (loop, fd)

    def _unwatch_exit(self) -> None:
        watch, self._exit_watch = getattr(self, "_exit_watch", None), None
        if watch is not None:
            loop, fd = watch
            loop.remove_reader(fd)
            os.close(fd)

    def _record_start(self, ip: str, port: int) -> None:
        """Record the new process and its address now, where JupyterHub would only once
        ``start`` returns: a hub that dies in between finds the server at its restart and
        waits for it (``poll``), instead of losing a spawn whose process runs on."""
        if self.server is not None:
            self.server.ip, self.server.port = ip, port
        self.save_state()

    def load_state(self, state):
        super().load_state(state)
        self._restored = bool(self.pid)  # a hub (re)start found this server's process

    async def _answered(self) -> int | None:
        """After a hub restart: wait until a server that was still starting answers (None)
        or its process ends (its status), up to ``start_timeout``; JupyterHub would give
        it only ``http_timeout`` (30 s), which a burst of spawns on a busy machine exceeds."""
        url = url_path_join(self.server.url, "api")
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            status = await LocalProcessSpawner.poll(self)
            if status is not None:
                return status
            try:
                await wait_for_http_server(url, timeout=2)
                return None
            except AnyTimeoutError:
                continue
        return None  # JupyterHub's own check follows, and gives up with its reason

    async def poll(self):
        if getattr(self, "_restored", False) and self.server is not None:
            self._restored = False
            self.log.info(
                "%s: checking that the server answers after the hub's restart", self._log_name
            )
            status = await self._answered()
        else:
            status = await super().poll()
        # a pending spawn has reserved GPUs but no process yet; a pending stop releases itself
        if status is not None and not (self._spawn_pending or self._stop_pending):
            self.release_gpus("server exited")
        return status

    async def stop(self, now=False):
        await super().stop(now=now)
        await self._end_leftover_processes()
        self.release_gpus("stopped")
        await asyncio.to_thread(local_homes(self.gpulab.settings).release, self.user.name)

    async def _end_leftover_processes(self) -> None:
        """A stopped server leaves nothing running that could hold its GPUs.

        Processes the user detached (nohup, setsid, terminal sessions) survive the
        server's own shutdown; when none of the user's other servers is running, every
        process of their unix account is ended (TERM, then KILL).
        """
        if os.geteuid() != 0:
            return
        others = [s for s in self.user.spawners.values() if s is not self and s.active]
        if others:
            return
        try:
            name = self.account.name
        except AccountError:  # no account of its own (its name is another user's): none to end
            return
        for sig, grace in (("TERM", 2.0), ("KILL", 2.0)):
            proc = await asyncio.create_subprocess_exec("pkill", f"-{sig}", "-u", name)
            if await proc.wait() == 1:  # no process matched: all gone
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                check = await asyncio.create_subprocess_exec(
                    "pgrep", "-u", name, stdout=asyncio.subprocess.DEVNULL
                )
                if await check.wait() == 1:
                    return
                await asyncio.sleep(0.1)
        self.log.warning("Processes of %s survived SIGKILL", name)


def reconcile_local_grants(ledger) -> list:
    """At hub start: free grants whose server process died while the hub was down."""
    return ledger.reconcile(lambda g: holder_alive(g.pid, g.pid_started))
