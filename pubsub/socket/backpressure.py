"""Cutting off websockets that stop reading, before their unsent bytes exhaust the node.

daphne has no websocket backpressure: a send to a client that stopped reading
lands in Twisted's write buffer and stays there (1,500 sends of 64 KiB to such a
client left 98 MB buffered). One such client per room would turn a busy room
into an out-of-memory kill of the node and of everyone on it.

So each socket's unsent bytes are metered (Twisted's buffer of the connection)
and a sweep every ``interval`` judges *sustained* slowness. The sweep looks only at
the sockets a write left bytes in Twisted for (``note``; the kernel takes a
reading socket's frames whole), and at every socket once per ``patience``: a
sweep of every socket four times a second was a tenth of a node's CPU at 5,000
sockets a node. One delivery batch
can briefly put more than the cap into a healthy socket's buffer, so a reading
over the cap is not enough: a socket is cut off when it is over the cap on two
sweeps in a row and the kernel took none of its bytes in between (Twisted wrote
nothing: the client stopped reading), or when it stays over the cap for
``patience`` seconds (it reads, but can never catch up). Between sweeps, a socket
found over the cap that has written nothing since and has grown past twice the
cap is cut at once, which bounds what a stuck client costs to about 2 × cap.

Cutting off drops the frames that Twisted has not started writing (whole
frames), then closes with 4008 (phoenix.js reconnects); a client that does not
read its close frame is dropped after the close handshake's timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

__all__ = ["SlowReaderGuard", "WriteWatch", "CLOSE_POLICY_VIOLATION", "fail_with_close_frame"]

logger = logging.getLogger(__name__)

CLOSE_POLICY_VIOLATION = 4008  # 4000 + RFC 6455's 1008, like DPS's other close codes


def _daphne_protocol(send):
    """The autobahn/Twisted protocol behind daphne's ASGI send (``partial(server.handle_reply, protocol)``)."""
    args = getattr(send, "args", ())
    protocol = args[0] if args else None
    return protocol if hasattr(getattr(protocol, "transport", None), "_tempDataBuffer") else None


def fail_with_close_frame(send) -> None:
    """Make daphne's websocket layer close with a code (1009 for a message over its own limit) rather
    than drop the TCP connection silently, autobahn's default (its ``failByDrop``)."""
    protocol = _daphne_protocol(send)
    if protocol is not None:
        protocol.failByDrop = False


def unsent_bytes(transport) -> int:
    """Bytes Twisted holds for a connection that the kernel has not taken yet."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class WriteWatch:
    """One socket's meter; ``cut_off`` runs once, when the guard decides the reader is too slow."""

    __slots__ = ("protocol", "on_cut", "over_since", "written_mark", "cut")

    def __init__(self, protocol, on_cut: Callable[[int], None]):
        self.protocol = protocol
        self.on_cut = on_cut
        self.over_since: float | None = None
        self.written_mark: tuple[int, int] | None = None
        self.cut = False

    def unsent(self) -> int:
        transport = self.protocol.transport
        return unsent_bytes(transport) if transport is not None else 0

    def progress_mark(self) -> tuple[int, int] | None:
        """Changes whenever Twisted hands bytes to the kernel (it moves its offset or rebuilds its buffer)."""
        transport = self.protocol.transport
        return (id(transport.dataBuffer), transport.offset) if transport is not None else None

    def cut_off(self, unsent: int) -> None:
        if self.cut:
            return
        self.cut = True
        transport = self.protocol.transport
        if transport is not None:
            # Frames Twisted has not started writing are whole: dropping them keeps the stream valid.
            transport._tempDataBuffer = []
            transport._tempDataLen = 0
            # What Twisted had started writing stays (a frame cut in half would corrupt the stream),
            # and the close frame follows it. A client that does not read it is dropped after the
            # close handshake's timeout (autobahn's, 1 s), which frees the rest.
            self.protocol.sendClose(code=CLOSE_POLICY_VIOLATION, reason="too slow: send buffer over limit")
        self.on_cut(unsent)


class SlowReaderGuard:
    """Meters every watched socket and cuts off the ones that stopped reading (one per node process)."""

    def __init__(self, max_buffer: int, interval: float = 0.25, patience: float = 5.0):
        self.max_buffer = max_buffer
        self.interval = interval
        self.patience = patience
        self._watches: set[WriteWatch] = set()
        self._pending: set[WriteWatch] = set()  # bytes left in Twisted at a write or the last sweep
        self._last_full_sweep = time.monotonic()
        self._sweeper: asyncio.Task | None = None

    def watch(self, send, on_cut: Callable[[int], None]) -> WriteWatch | None:
        """Start metering the socket behind an ASGI send; None where the server is not daphne."""
        if self.max_buffer <= 0:
            return None
        protocol = _daphne_protocol(send)
        if protocol is None:
            return None
        watch = WriteWatch(protocol, on_cut)
        self._watches.add(watch)
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done() or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep_forever(), name="dps-slow-reader-sweep")
        return watch

    def forget(self, watch: WriteWatch | None) -> None:
        self._watches.discard(watch)
        self._pending.discard(watch)

    def note(self, watch: WriteWatch) -> None:
        """A write left bytes of this socket in Twisted's buffer: the sweeps look at it until it drains."""
        if not watch.cut:
            self._pending.add(watch)

    def check_now(self, watch: WriteWatch) -> bool:
        """Between sweeps: cut a socket already over the cap that keeps growing. True if it is cut."""
        if watch.cut:
            return True
        if watch.over_since is not None:
            unsent = watch.unsent()
            if unsent > 2 * self.max_buffer and watch.progress_mark() == watch.written_mark:
                watch.cut_off(unsent)
                return True
        return False

    def sweep(self, now: float | None = None, everyone: bool = False) -> None:
        """Judge the noted sockets (every socket with everyone, or once per patience)."""
        now = time.monotonic() if now is None else now
        if everyone or now - self._last_full_sweep >= self.patience:
            self._last_full_sweep = now
            watches = list(self._watches)
        else:
            watches = list(self._pending)
        for watch in watches:
            if watch.cut:
                self.forget(watch)
                continue
            unsent, mark = watch.unsent(), watch.progress_mark()
            if unsent <= self.max_buffer:
                watch.over_since = None
            elif watch.over_since is None:
                watch.over_since = now  # one reading over the cap may be a burst
            elif mark == watch.written_mark or now - watch.over_since >= self.patience:
                watch.cut_off(unsent)  # over the cap and not draining, or never catching up
                self.forget(watch)
                continue
            watch.written_mark = mark
            if unsent:
                self._pending.add(watch)
            else:
                self._pending.discard(watch)  # drained: the next write that leaves bytes notes it again

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sweep()
            except Exception:
                logger.exception("slow-reader sweep failed; carrying on")
