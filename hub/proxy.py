"""configurable-http-proxy apart from the hub: it outlives the hub, and is watched by request.

JupyterHub's own ``ConfigurableHTTPProxy`` replaces the proxy at every hub start (every
route gone for 2 s, for everyone) and notices only a proxy process that exited, not one
that hangs. ``GpulabProxy``:

- adopts the proxy an earlier hub started when it is still the same command and answers
  a health request with the proxy token (kept in the data root, so a new hub knows it);
  otherwise it ends that one and starts a new one, in its own session, so it outlives
  this hub too (with ``JupyterHub.cleanup_proxy = False`` a hub stop leaves it running);
- checks the proxy every ``check_running_interval`` with a request, not by its pid
  (``/_chp_healthz`` on the public port, the proxy's own health check): a proxy that
  does not answer twice in a row (or is gone) is killed, a new one is started and the
  routes are restored.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import time
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from urllib.parse import unquote

import aiohttp
from jupyterhub.httpclient import fetch
from jupyterhub.objects import Server
from jupyterhub.proxy import ConfigurableHTTPProxy
from jupyterhub.utils import url_path_join
from tornado.ioloop import PeriodicCallback
from traitlets import Float, Integer, Unicode

from .procinfo import live_args


class GpulabProxy(ConfigurableHTTPProxy):
    """A configurable-http-proxy that survives hub restarts and is checked by request."""

    health_timeout = Float(
        2.0, config=True, help="Seconds the proxy has to answer a health request."
    )
    health_attempts = Integer(
        2, config=True, help="Health requests in a row that must fail before a restart."
    )
    output_file = Unicode(
        "",
        config=True,
        help="""File the proxy's output is appended to ("": the hub's output).

        The proxy outlives the hub, so it should not write where the hub's output goes
        (a terminal that closes, a pipe whose reader exits).""",
    )

    _pid: int | None = None
    _restarting = False
    _said_goodbye = False

    # -- the command -------------------------------------------------------------------

    def proxy_cmd(self) -> list[str]:
        """The command line the proxy runs with (as JupyterHub builds it)."""
        public = Server.from_url(self.public_url)
        if public._unix_socket:
            server_args = ["--socket", unquote(public.connect_addr)]
        else:
            server_args = ["--ip", public.ip, "--port", str(public.port)]
        api = Server.from_url(self.api_url)
        if api._unix_socket:
            api_args = ["--api-socket", unquote(api.connect_addr)]
        else:
            api_args = ["--api-ip", api.ip, "--api-port", str(api.port)]
        cmd = [
            *self.command,
            *server_args,
            *api_args,
            "--error-target",
            url_path_join(self.hub.url, "error"),
            "--log-level",
            self.log_level,
        ]
        if self.app.subdomain_host:
            cmd.append("--host-routing")
        if self.ssl_key:
            cmd.extend(["--ssl-key", self.ssl_key])
        if self.ssl_cert:
            cmd.extend(["--ssl-cert", self.ssl_cert])
        if self.app.internal_ssl:
            cmd.extend(self._get_ssl_options())
        return cmd

    def _runs(self, pid: int, cmd: list[str]) -> bool:
        """Whether ``pid`` is a live process running the proxy with ``cmd``'s arguments."""
        running = live_args(pid)
        if running is None:
            return False
        args = cmd[len(self.command) :]
        # a script's interpreter (node) comes first; the script's path is the command's
        return running[len(running) - len(args) :] == args and any(
            self.command[-1] in part for part in running[: len(running) - len(args)]
        )

    def _recorded_pid(self) -> int | None:
        try:
            return int(Path(self.pid_file).read_text().strip())
        except (OSError, ValueError):
            return None

    # -- health ------------------------------------------------------------------------

    async def answers_api(self) -> bool:
        """Whether the proxy's API answers with the routes for the proxy token, in time:
        the proxy is this hub's, and the hub can manage its routes."""
        return await self._ok(
            url_path_join(self.api_url, "api/routes"),
            headers={"Authorization": f"token {self.auth_token}"},
        )

    async def healthy(self) -> bool:
        """Whether the proxy answers its health check on the public port users come in
        at, in time (``/_chp_healthz``, which the proxy does not log)."""
        public = Server.from_url(self.public_url)
        if public._unix_socket:
            url = f"{public.proto}://{public.connect_addr}/_chp_healthz"
        else:
            host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(public.ip)
            host = host or (f"[{public.ip}]" if ":" in public.ip else public.ip)
            url = f"{public.proto}://{host}:{public.port}/_chp_healthz"
        return await self._ok(url, ssl=False)  # its certificate names the public host

    async def _ok(self, url: str, **kwargs) -> bool:
        try:
            response = await fetch(
                url,
                raise_for_status=False,
                timeout=aiohttp.ClientTimeout(total=self.health_timeout),
                **kwargs,
            )
            async with response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, OSError):  # OSError: TimeoutError too
            return False

    def _alive(self) -> bool:
        if self.proxy_process is not None:
            return self.proxy_process.poll() is None
        return self._pid is not None and self._runs(self._pid, self.proxy_cmd())

    # -- start, check, stop ------------------------------------------------------------

    async def start(self) -> None:
        """Adopt the proxy an earlier hub left running, or start a new one."""
        cmd = self.proxy_cmd()
        pid = self._recorded_pid()
        adopted = False
        if pid is not None:
            if self._runs(pid, cmd) and await self.answers_api() and await self.healthy():
                self.log.info("Adopting the running proxy (pid %i)", pid)
                self.proxy_process, self._pid = None, pid
                adopted = True
            elif self._runs(pid, cmd):
                self.log.warning("The proxy (pid %i) does not answer: replacing it", pid)
                await self._end(pid, signal.SIGKILL)
            elif _is_proxy(pid, self.command):
                self.log.warning("The proxy (pid %i) runs with other settings: replacing it", pid)
                await self._end(pid, signal.SIGTERM)
        if not adopted:
            self._remove_process_files()
            await self._launch(cmd)
        if self._check_running_callback is None:
            self._check_running_callback = PeriodicCallback(
                self.check_running, 1e3 * self.check_running_interval
            )
            self._check_running_callback.start()
            atexit.register(self._goodbye)

    async def _launch(self, cmd: list[str]) -> None:
        """Start a proxy in its own session (it outlives the hub) and wait until it answers."""
        if " --ssl" not in " ".join(cmd):
            self.log.warning(
                "Running JupyterHub without SSL."
                "  I hope there is SSL termination happening somewhere else..."
            )
        self.log.info("Starting proxy @ %s", Server.from_url(self.public_url).bind_url)
        self.log.debug("Proxy cmd: %s", cmd)
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": self.auth_token}
        out = open(self.output_file, "ab") if self.output_file else None
        try:
            self.proxy_process = Popen(
                cmd,
                env=env,
                start_new_session=True,
                umask=self.command_umask,
                stdin=DEVNULL,
                stdout=out,
                stderr=STDOUT if out else None,
            )
        except FileNotFoundError:
            self.log.error(
                "Failed to find proxy %r: install it with `npm install -g "
                "configurable-http-proxy` (or run scripts/install)",
                self.command,
            )
            raise
        finally:
            if out:
                out.close()
        self._pid = self.proxy_process.pid
        self._write_pid_file()
        if self.output_file:
            self.log.info("The proxy (pid %i) writes its log to %s", self._pid, self.output_file)
        deadline = time.monotonic() + 15
        while True:
            status = self.proxy_process.poll()
            if status is not None:
                raise RuntimeError(f"Proxy failed to start with exit code {status}")
            if await self.answers_api() and await self.healthy():
                break
            if time.monotonic() > deadline:
                raise TimeoutError("Waiting for proxy endpoints didn't complete in 15s")
            await asyncio.sleep(0.1)
        self.log.debug("Proxy started and appears to be up")

    async def check_running(self) -> None:
        """Restart the proxy when it is gone or does not answer health requests."""
        if self._restarting:
            return
        pid = self._pid
        if self._alive():
            for attempt in range(self.health_attempts):
                if await self.healthy():
                    return
                if attempt + 1 < self.health_attempts:
                    self.log.warning(
                        "The proxy (pid %s) did not answer a health request within %gs",
                        pid,
                        self.health_timeout,
                    )
                    await asyncio.sleep(1)
            self.log.warning(
                "The proxy (pid %s) did not answer %i health requests in a row: "
                "killing it and starting a new one",
                pid,
                self.health_attempts,
            )
        else:
            code = self.proxy_process.poll() if self.proxy_process is not None else None
            self.log.warning(
                "The proxy (pid %s) is gone (exit code %s): starting a new one",
                pid,
                "unknown" if code is None else code,
            )
        self._restarting = True
        try:
            if pid is not None:
                await self._end(pid, signal.SIGKILL)
            self._remove_process_files()
            self._pid = None
            await self._launch(self.proxy_cmd())
            await self.restore_routes()
            self.log.warning("A new proxy (pid %i) serves the routes again", self._pid)
        except Exception:
            self.log.exception("Restarting the proxy failed; trying again at the next check")
        finally:
            self._restarting = False

    async def _end(self, pid: int, sig: int) -> None:
        """Send ``sig`` to ``pid``, SIGKILL if it is still there after 3 s; wait until it is
        gone (a stopped process never acts on SIGTERM)."""
        child = self.proxy_process if self._pid == pid else None

        def gone() -> bool:
            if child is not None:
                return child.poll() is not None
            return not _is_proxy(pid, self.command)

        for current, patience in ((sig, 3.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, current)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + patience
            while time.monotonic() < deadline:
                if gone():
                    return
                await asyncio.sleep(0.05)
        self.log.error("The proxy (pid %i) survived SIGKILL", pid)

    def stop(self) -> None:
        """Stop the proxy (only when ``JupyterHub.cleanup_proxy`` is set: gpulab leaves it)."""
        if self._check_running_callback is not None:
            self._check_running_callback.stop()
        self._said_goodbye = True
        if self._pid is not None:
            self.log.info("Cleaning up proxy[%i]...", self._pid)
            try:
                os.kill(self._pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self._remove_process_files()

    def _goodbye(self) -> None:
        """Say, as the hub exits, that the proxy goes on serving."""
        if self._said_goodbye or self._pid is None:
            return
        self.log.info(
            "The proxy keeps running (pid %i) and serving the user servers; the next hub "
            "start adopts it. To stop it: kill $(cat %s)",
            self._pid,
            os.path.abspath(self.pid_file),
        )


def _is_proxy(pid: int, command: list[str]) -> bool:
    """Whether ``pid`` is a live configurable-http-proxy process."""
    args = live_args(pid)
    return args is not None and any(command[-1] in part for part in args)
