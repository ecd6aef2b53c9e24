"""What a user's server tells the hub's idle reclaim (``GET gpulab/internal/activity``):
a kernel running a cell is busy for as long as the cell runs, and nothing is answered
without the server's secret."""

from __future__ import annotations

import asyncio
import json
import time


async def until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


def test_a_running_cell_keeps_the_server_busy_until_it_ends(
    jp_fetch, jp_serverapp, hub_call, on_the_server
):
    on_the_server(running_cell_keeps_busy(jp_fetch, jp_serverapp, hub_call))


async def running_cell_keeps_busy(jp_fetch, jp_serverapp, hub_call):
    status, activity = await hub_call("GET", "activity")
    assert status == 200, activity
    assert activity["busy_kernels"] == 0 and activity["last_activity"] is None

    r = await jp_fetch("api", "kernels", method="POST", body='{"name": "python3"}')
    kernel = jp_serverapp.kernel_manager.get_kernel(json.loads(r.body)["id"])
    client = kernel.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)

        async def busy():
            _, answer = await hub_call("GET", "activity")
            return answer["busy_kernels"] == 1 and answer

        async def idle():
            _, answer = await hub_call("GET", "activity")
            return answer["busy_kernels"] == 0 and answer

        client.execute("import time\nfor _ in range(600): time.sleep(0.1)")
        during = await until(busy, 60, "the running cell to make the server busy")
        assert during["last_activity"] is not None
        await asyncio.sleep(1)  # still running a second later: still busy
        assert await busy()
        await jp_fetch("api", "kernels", kernel.kernel_id, "interrupt", method="POST", body="")
        await until(idle, 60, "the interrupted cell to leave the server idle")
    finally:
        client.stop_channels()


def test_the_activity_is_only_for_the_hub(hub_call, on_the_server):
    for secret in ("", "a-guess"):
        status, answer = on_the_server(hub_call("GET", "activity", secret=secret))
        assert status == 403, answer
