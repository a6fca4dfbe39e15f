"""What one socket may cost a node: unsent bytes (a slow reader is cut off), silence (the idle
timeout), and the node's socket count; and closing for a drain."""

from __future__ import annotations

import asyncio
import logging

from pubsub.socket.backpressure import SlowReaderGuard
from pubsub.socket.close_codes import CLOSE_GOING_AWAY, CLOSE_TOO_SLOW
from pubsub.socket.fastlane import send_nowait

logger = logging.getLogger("pubsub.socket.consumer")

# One guard per process meters every socket's unsent bytes (pubsub/socket/backpressure.py).
_slow_reader_guards: dict[int, SlowReaderGuard] = {}


def slow_reader_guard(max_send_buffer: int) -> SlowReaderGuard:
    guard = _slow_reader_guards.get(max_send_buffer)
    if guard is None:
        guard = _slow_reader_guards[max_send_buffer] = SlowReaderGuard(max_send_buffer)
    return guard


class Limits:
    """Mixed into PhoenixSocket."""

    def _watch_writes(self) -> None:
        """Meter this socket's unsent bytes (daphne only); too slow a reader is closed with 4008."""
        if self.max_send_buffer <= 0:
            return
        self._guard = slow_reader_guard(self.max_send_buffer)
        self._write_watch = self._guard.watch(self.base_send, self._cut_off)

    def _cut_off(self, unsent: int) -> None:
        self.closed = True
        self.count("slow_readers_cut")
        logger.warning(
            "closed websocket %s with %d: %d bytes unsent over the %d-byte limit (DPS_MAX_SEND_BUFFER)",
            self.scope.get("client"),
            CLOSE_TOO_SLOW,
            unsent,
            self.max_send_buffer,
        )

    def _close_for_drain(self) -> None:
        """The node is stopping: close with a code after which clients reconnect (to another node)."""
        send_nowait(self.base_send, {"type": "websocket.close", "code": CLOSE_GOING_AWAY})

    def _open_connections(self) -> int:
        stats = getattr(self.channel_layer, "stats", None)
        return stats["connections_opened"] - stats["connections_closed"] if stats is not None else 0

    def _touch(self) -> None:
        self.last_seen = asyncio.get_running_loop().time()

    def _arm_idle_timer(self) -> None:
        if self.idle_timeout > 0:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_at(self.last_seen + self.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per socket, moved only when it fires: cheaper than resetting it per frame.
        if asyncio.get_running_loop().time() < self.last_seen + self.idle_timeout:
            self._arm_idle_timer()
        elif self._closing is None:
            self._closing = asyncio.ensure_future(self._close(CLOSE_GOING_AWAY, f"no data for {self.idle_timeout}s"))
