"""Container probes as the kubelet's prober runs them: ``httpGet`` (success on
200-399), ``tcpSocket`` (a connection opens), ``exec`` (exit code 0, run with the
container's environment), with ``initialDelaySeconds``, ``periodSeconds`` (default
10), ``timeoutSeconds`` (default 1), ``successThreshold`` and ``failureThreshold``
(default 3), and ``grpc`` (the gRPC health checking protocol, ``grpc.health.v1.Health/
Check``, answered SERVING). An ``exec`` probe runs as FakeKube's user in this host's
mount namespace, not in the container's (so not as ``runAsUser``, and without the
cluster DNS ``/etc/hosts`` of ``containers``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

Obj = dict[str, Any]


def _port(value: Any, container: Obj) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    for port in container.get("ports") or []:
        if port.get("name") == value:
            return int(port["containerPort"])
    raise ValueError(f"unknown port {value!r}")


async def probe_once(
    probe: Obj, container: Obj, env: Mapping[str, str], cwd: str
) -> tuple[bool, str]:
    """One attempt: (success, the kubelet's failure output)."""
    timeout = probe.get("timeoutSeconds", 1)
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            host = get.get("host") or "127.0.0.1"
            url = f"{get.get('scheme', 'HTTP').lower()}://{host}:{_port(get['port'], container)}{get.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout)
            ) as session:
                async with session.get(
                    url, headers=headers, ssl=False, allow_redirects=False
                ) as resp:
                    if 200 <= resp.status < 400:
                        return True, ""
                    return False, f"HTTP probe failed with statuscode: {resp.status}"
        if "tcpSocket" in probe:
            host = probe["tcpSocket"].get("host") or "127.0.0.1"
            connect = asyncio.open_connection(host, _port(probe["tcpSocket"]["port"], container))
            _, writer = await asyncio.wait_for(connect, timeout)
            writer.close()
            return True, ""
        if "exec" in probe:
            proc = await asyncio.create_subprocess_exec(
                *probe["exec"]["command"],
                env=dict(env),
                cwd=cwd,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), timeout)
            except TimeoutError:
                return False, f"command timed out after {timeout}s"
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            return proc.returncode == 0, out.decode(errors="replace").strip()
        if "grpc" in probe:
            return await _grpc_health(probe["grpc"], timeout)
        return False, "the probe names no handler (httpGet, tcpSocket, exec or grpc)"
    except (OSError, TimeoutError, aiohttp.ClientError, ValueError) as e:
        return False, f"{type(e).__name__}: {e}"


_HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


async def _grpc_health(spec: Obj, timeout: float) -> tuple[bool, str]:
    """``grpc.health.v1.Health/Check`` with the messages encoded by hand: the request
    carries ``service`` (field 1, a string), the answer ``status`` (field 1, an enum)."""
    import grpc

    service = spec.get("service", "").encode()
    request = b"\x0a" + bytes([len(service)]) + service if service else b""
    address = f"127.0.0.1:{spec['port']}"
    async with grpc.aio.insecure_channel(address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            answer = await check(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            return False, (
                f"failed to connect service {address!r} within {timeout}s: {e.details()}"
            )
    status = answer[1] if answer[:1] == b"\x08" and len(answer) > 1 else 0
    if status == 1:
        return True, ""
    return False, f"service unhealthy (responded with {_HEALTH_STATUS.get(status, status)!r})"


async def results(
    probe: Obj, container: Obj, env: Mapping[str, str], cwd: str
) -> AsyncIterator[tuple[bool, str, bool | None]]:
    """Probe forever: after each attempt ``(ok, output, verdict)``, the verdict True or
    False when the success or failure threshold is reached, else None."""
    await asyncio.sleep(probe.get("initialDelaySeconds", 0))
    oks = fails = 0
    while True:
        ok, output = await probe_once(probe, container, env, cwd)
        oks, fails = (oks + 1, 0) if ok else (0, fails + 1)
        if ok:
            verdict = True if oks >= probe.get("successThreshold", 1) else None
        else:
            verdict = False if fails >= probe.get("failureThreshold", 3) else None
        yield ok, output, verdict
        await asyncio.sleep(probe.get("periodSeconds", 10))
