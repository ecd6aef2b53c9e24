"""Container probes as the kubelet's prober runs them: ``httpGet`` (success on
200-399) and ``tcpSocket`` (a connection opens), with ``initialDelaySeconds``,
``periodSeconds`` (default 10), ``timeoutSeconds`` (default 1), ``successThreshold``
and ``failureThreshold`` (default 3). The ``exec`` and ``grpc`` handlers, which no
manifest of gpulab's uses, are not imitated: validation refuses them (422).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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


async def probe_once(probe: Obj, container: Obj) -> tuple[bool, str]:
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
        return False, "the probe names no handler (httpGet or tcpSocket)"
    except (OSError, TimeoutError, aiohttp.ClientError, ValueError) as e:
        return False, f"{type(e).__name__}: {e}"


async def results(probe: Obj, container: Obj) -> AsyncIterator[tuple[bool, str, bool | None]]:
    """Probe forever: after each attempt ``(ok, output, verdict)``, the verdict True or
    False when the success or failure threshold is reached, else None."""
    await asyncio.sleep(probe.get("initialDelaySeconds", 0))
    oks = fails = 0
    while True:
        ok, output = await probe_once(probe, container)
        oks, fails = (oks + 1, 0) if ok else (0, fails + 1)
        if ok:
            verdict = True if oks >= probe.get("successThreshold", 1) else None
        else:
            verdict = False if fails >= probe.get("failureThreshold", 3) else None
        yield ok, output, verdict
        await asyncio.sleep(probe.get("periodSeconds", 10))
