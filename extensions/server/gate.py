"""Hold what users send their kernels while a switch moves them, so no cell runs in a
half-switched kernel.

From the moment a Return or Get GPU reaches the server until its kernels are restored,
every message a browser tab, console or API client sends a kernel over its websocket
is held here, in order, instead of going to the kernel. Once the switch is over they go
to the restored kernel, in the order they came; where a kernel's variables could not be
brought back, its held cells are answered instead with an error that says why (never
run in a kernel that lacks what the user had). Kernel starts, restarts and shutdowns
that users ask for meanwhile wait too, so a kernel started during a switch gets the new
devices and none is restarted under the switch's feet.

The switch's own calls (its checkpoint and restore requests, its restarts) go through:
they run in a context where ``INTERNAL`` is set.

A cell a tab sent before the gate closed may not have reached the kernel yet: it waits
in the kernel's socket, and the kernel reads its sockets in turn, not in the order
messages came, so the switch's checkpoint request (on a socket of its own) can overtake
it, and the cell would then run after the save, its effect lost. Each tab's connection
counts the cells it passed on that have no answer yet (``GatedConnection.unanswered``);
a switch saves a kernel only once none is left (``KernelGate.unanswered``).

After a switch restarted a kernel, the gate opens only once each open tab's channel to
it has reconnected (a request sent on it is answered: ``GatedConnection.reconnected``).
Until then what a tab passes on waits in its channel, where nothing shows it: the next
switch could save the kernel before those cells reach it, and they would run after the
save or be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
import weakref
from collections import deque
from dataclasses import dataclass

from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

try:
    from jupyter_client.jsonutil import json_default
except ImportError:  # jupyter_client < 7
    from jupyter_client.jsonutil import date_default as json_default

INTERNAL: contextvars.ContextVar[bool] = contextvars.ContextVar("gpulab_switching", default=False)
"""Set in the switch's own task: its kernel calls are not held."""

V1 = "v1.kernel.websocket.jupyter.org"
IOPUB_PATIENCE = 60.0
"""Seconds to wait for a restarted kernel's output to reach a tab before its held cells
go on anyway. Its output channel reconnects within a fraction of a second on a machine
with time to spare; on a starved one (every core busy) it took over 10 s, and cells let
go before it had were lost, or their output was. Only a tab that never reconnects (its
browser gone without closing it) waits this long."""
HELD_KERNEL_CALLS = ("start_kernel", "restart_kernel", "shutdown_kernel")


@dataclass
class _Held:
    connection: GatedConnection
    message: str | bytes
    refusal: str = ""
    """Why it is answered with an error instead of going to the kernel ("" : it goes)."""


class KernelGate:
    """Closed while one or more switches run (``holding``, or ``close``/``reopen``); holds
    kernel messages meanwhile."""

    def __init__(self, log):
        self.log = log
        self._depth = 0
        self._open = asyncio.Event()
        self._open.set()
        self._held: deque[_Held] = deque()
        self._refused: dict[str, str] = {}
        self._restarted: dict[str, float] = {}
        self._release: asyncio.Task | None = None
        self._tabs: weakref.WeakSet[GatedConnection] = weakref.WeakSet()

    @contextlib.contextmanager
    def holding(self, kernel_manager):
        """Closed for the block, which runs as the switch (its kernel calls go through)."""
        self.close()
        internal = INTERNAL.set(True)
        try:
            yield
        finally:
            INTERNAL.reset(internal)
            self.reopen(kernel_manager)

    def close(self) -> None:
        self._depth += 1
        self._open.clear()

    def reopen(self, kernel_manager) -> None:
        """One switch is over; when none is left, the held messages go on."""
        self._depth -= 1
        if self._depth == 0 and (self._release is None or self._release.done()):
            self._release = asyncio.ensure_future(self._deliver(kernel_manager))

    def connected(self, tab: GatedConnection) -> None:
        """A tab opened a channel to a kernel."""
        self._tabs.add(tab)

    def unanswered(self, kernel_id: str, pid: int | None) -> int:
        """How many cells the open tabs sent kernel ``kernel_id`` (its process ``pid``)
        have no answer yet: sent before the gate closed, they are queued in the kernel or
        running."""
        return sum(
            tab.unanswered(pid)
            for tab in list(self._tabs)
            if tab.open and tab.kernel_id == kernel_id
        )

    def restarted(self, kernel_id: str) -> None:
        """The kernel's old process is gone: its tabs' output channels reconnect to the new
        one, and held cells wait until they have (else their output would be lost)."""
        self._restarted[kernel_id] = time.monotonic()

    def refuse(self, kernel_id: str, reason: str) -> None:
        """Answer the kernel's held cells (and those that come until the gate opens) with
        ``reason`` instead of running them: its variables are not what the user had."""
        self._refused[kernel_id] = reason
        for held in self._held:
            if held.connection.kernel_id == kernel_id:
                held.refusal = reason

    def refuse_now(self, kernel_id: str, reason: str) -> None:
        """As ``refuse``, answering the cells already held at once (the kernel is about to
        go away, and its tabs' connections with it)."""
        self.refuse(kernel_id, reason)
        mine = [h for h in self._held if h.connection.kernel_id == kernel_id]
        self._held = deque(h for h in self._held if h.connection.kernel_id != kernel_id)
        for held in mine:
            self._answer(held)

    async def wait_open(self) -> None:
        """Until no switch runs (at once in the switch's own calls)."""
        if not INTERNAL.get():
            await self._open.wait()

    def hold(self, connection: GatedConnection, message: str | bytes) -> bool:
        """Keep ``message`` for later if a switch runs; whether it was kept."""
        if self._open.is_set() or INTERNAL.get():
            return False
        self._held.append(_Held(connection, message, self._refused.get(connection.kernel_id, "")))
        return True

    def wrap(self, kernel_manager) -> None:
        """Make the kernel manager's start, restart and shutdown wait while a switch runs."""
        for name in HELD_KERNEL_CALLS:
            original = getattr(kernel_manager, name)

            async def waiting(*args, _original=original, **kwargs):
                await self.wait_open()
                result = _original(*args, **kwargs)
                return await result if asyncio.iscoroutine(result) else result

            setattr(kernel_manager, name, waiting)

    async def _deliver(self, kernel_manager) -> None:
        try:
            kernels = {h.connection.kernel_id for h in self._held if not h.refusal}
            tabs = [t for t in list(self._tabs) if t.open and t.kernel_id in self._restarted]
            await asyncio.gather(
                *(self._output_back(kernel_manager, k) for k in kernels if k in self._restarted),
                *(self._reconnected(tab) for tab in tabs),
            )
        except Exception:  # noqa: BLE001 -- the held cells go on regardless
            self.log.exception("gpulab: waiting for restarted kernels' channels")
        delivered = 0
        while self._held and self._depth == 0:
            self._answer(self._held.popleft())
            delivered += 1
        if delivered:
            self.log.info("gpulab: %d kernel message(s) held during the switch went on", delivered)
        if self._depth == 0:
            self._refused.clear()
            self._restarted.clear()
            self._open.set()

    def _answer(self, held: _Held) -> None:
        """A held message to its kernel, or its refusal to its tab."""
        try:
            if held.refusal:
                held.connection.refuse(held.message, held.refusal)
            else:
                held.connection.pass_on(held.message)
        except Exception:  # noqa: BLE001 -- one closed tab must not hold up the rest
            self.log.exception("gpulab: passing on a held kernel message")

    async def _reconnected(self, tab: GatedConnection) -> None:
        try:
            await asyncio.wait_for(tab.reconnected(), IOPUB_PATIENCE)
        except TimeoutError:
            self.log.warning(
                "gpulab: a tab's channel to kernel %s did not answer in %.0f s; its cells go on",
                tab.kernel_id,
                IOPUB_PATIENCE,
            )

    async def _output_back(self, kernel_manager, kernel_id: str) -> None:
        """Until every open tab of a restarted kernel receives its output again.

        A tab's output subscription reconnects by itself once the new process listens;
        what the kernel publishes before is lost to it. A tab has reconnected once it
        sees a message the new process published (the restore's status messages, or
        those of the kernel_info requests sent here on a channel of our own)."""
        since = self._restarted[kernel_id]
        # the tabs whose cells are held (a closed tab's connection may linger, buffering)
        tabs = {h.connection for h in self._held if h.connection.kernel_id == kernel_id}

        def waiting() -> list[GatedConnection]:
            return [c for c in tabs if c.open and c.iopub_seen < since]

        if not waiting() or kernel_id not in kernel_manager:
            return
        kernel = kernel_manager.get_kernel(kernel_id)
        shell = kernel.connect_shell()
        try:
            deadline = time.monotonic() + IOPUB_PATIENCE
            while waiting() and time.monotonic() < deadline:
                kernel.session.send(shell, "kernel_info_request")
                await asyncio.sleep(0.1)
        finally:
            shell.close()


class GatedConnection(ZMQChannelsWebsocketConnection):
    """A kernel's websocket connection whose incoming messages wait while a switch runs."""

    iopub_seen = 0.0
    """When a message of the kernel's output channel last reached this tab (monotonic)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._probes: dict[str, asyncio.Future] = {}
        """The gate's own requests on this tab's channel, by message id: their answers are
        not the tab's."""
        self._cells: dict[str, int | None] = {}
        """The cells passed on to the kernel and not yet answered: the kernel process each
        went to, by message id."""

    def unanswered(self, pid: int | None) -> int:
        """How many cells this tab sent kernel process ``pid`` have no answer yet (those
        sent an earlier process of the kernel never will)."""
        return sum(1 for sent_to in list(self._cells.values()) if sent_to == pid)

    def connect(self):
        self.gate.connected(self)
        return super().connect()

    def reconnected(self) -> asyncio.Future:
        """Answered once a request sent now on this tab's shell channel is: the channel
        reaches the kernel (its process since a restart), so what the tab sends from now on
        gets there in order, before what a later switch sends on channels of its own."""
        msg = self.session.msg("kernel_info_request")
        done = asyncio.get_running_loop().create_future()
        self._probes[msg["header"]["msg_id"]] = done
        done.add_done_callback(lambda _: self._probes.pop(msg["header"]["msg_id"], None))
        self.session.send(self.channels["shell"], msg)
        return done

    @property
    def gate(self) -> KernelGate:
        return self.websocket_handler.settings["gpulab_switch"].gate

    @property
    def open(self) -> bool:
        """Its tab is still connected."""
        return bool(self.channels) and self.websocket_handler.ws_connection is not None

    def handle_incoming_message(self, incoming_msg) -> None:
        if not self.gate.hold(self, incoming_msg):
            self.pass_on(incoming_msg)

    def pass_on(self, incoming_msg) -> None:
        """A message to the kernel (a held one once the switch is over); a cell is counted
        until its answer comes."""
        marker = b"execute_request" if isinstance(incoming_msg, bytes) else "execute_request"
        if self.channels and marker in incoming_msg:  # only a cell is parsed twice
            try:
                channel, header = self._header(incoming_msg)
            except Exception:  # noqa: BLE001 -- jupyter_server says what is wrong with it
                channel, header = "", {}
            if channel == "shell" and header.get("msg_type") == "execute_request":
                pid = self._kernel_pid()
                if any(sent_to != pid for sent_to in self._cells.values()):
                    # the kernel restarted: what went to its old process is never answered
                    self._cells = {m: p for m, p in self._cells.items() if p == pid}
                self._cells[header.get("msg_id", "")] = pid
        super().handle_incoming_message(incoming_msg)

    def _kernel_pid(self) -> int | None:
        try:
            kernel = self.multi_kernel_manager.get_kernel(self.kernel_id)
        except KeyError:  # shut down meanwhile
            return None
        return getattr(getattr(kernel, "provisioner", None), "pid", None)

    def handle_outgoing_message(self, stream, outgoing_msg) -> None:
        channel = stream if isinstance(stream, str) else getattr(stream, "channel", None)
        if channel == "iopub":
            self.iopub_seen = time.monotonic()
        elif channel == "shell" and (self._probes or self._cells):
            parent = self._parent_id(outgoing_msg)
            self._cells.pop(parent, None)
            probe = self._probes.get(parent)
            if probe is not None:
                if not probe.done():
                    probe.set_result(None)
                return  # the gate's, not the tab's
        super().handle_outgoing_message(stream, outgoing_msg)

    def _parent_id(self, outgoing_msg) -> str:
        try:
            _, parts = self.session.feed_identities(outgoing_msg)
            return self.session.unpack(parts[2]).get("msg_id", "")
        except Exception:  # noqa: BLE001 -- not an answer to one of the gate's requests
            return ""

    def refuse(self, incoming_msg, reason: str) -> None:
        """A held message to a kernel whose variables did not come back: a cell is answered
        with an error naming ``reason`` (as the kernel would answer a failed cell); other
        requests (completion, kernel info) go to the kernel."""
        if not self.channels:
            return
        channel, header = self._header(incoming_msg)
        if channel != "shell" or header.get("msg_type") != "execute_request":
            self.pass_on(incoming_msg)
            return
        text = f"Not run: {reason}"
        error = {"ename": "NotRun", "evalue": reason, "traceback": [text]}
        self._send("iopub", "status", {"execution_state": "busy"}, header)
        self._send("iopub", "error", error, header)
        self._send("shell", "execute_reply", {"status": "error", "execution_count": None,
                                              **error}, header)  # fmt: skip
        self._send("iopub", "status", {"execution_state": "idle"}, header)

    def _header(self, incoming_msg) -> tuple[str, dict]:
        if self.subprotocol == V1:
            channel, parts = deserialize_msg_from_ws_v1(incoming_msg)
            return channel, self.session.unpack(parts[0])
        if isinstance(incoming_msg, bytes):
            msg = deserialize_binary_message(incoming_msg)
        else:
            msg = json.loads(incoming_msg)
        return msg.get("channel") or "shell", msg.get("header") or {}

    def _send(self, channel: str, msg_type: str, content: dict, parent: dict) -> None:
        msg = self.session.msg(msg_type, content, parent=parent)
        if self.subprotocol == V1:
            self.write_message(serialize_msg_to_ws_v1(msg, channel, self.session.pack), binary=True)
        else:
            msg["channel"] = channel
            self.write_message(json.dumps(msg, default=json_default))


def install(serverapp, gate: KernelGate) -> bool:
    """Hold kernel messages and kernel calls at ``gate`` in this server; False where the
    server talks to its kernels some other way (a gateway), which is left as it is."""
    settings = serverapp.web_app.settings
    current = settings.get("kernel_websocket_connection_class")
    if current is not ZMQChannelsWebsocketConnection:
        return False
    settings["kernel_websocket_connection_class"] = GatedConnection
    gate.wrap(serverapp.kernel_manager)
    return True
