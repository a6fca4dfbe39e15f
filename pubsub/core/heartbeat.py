"""Heartbeats from a thread of their own, so a busy event loop is not mistaken for a dead process.

Under overload a node's event loop can take seconds to reach a sleeping task;
a heartbeat renewed from that loop then expires, and owners dropped a live,
merely busy node from every room (half the deliveries of a saturated run were
lost for good). Here a thread renews the heartbeat on its own connection. It
still stops when the process is really stuck: the thread posts a no-op to the
loop each turn, and if the loop has not run one for ``stall_limit`` seconds it
stops renewing, so owners forget a wedged process as they forget a dead one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["HeartbeatThread", "heartbeat_interval", "start_heartbeat", "stop_heartbeat"]

logger = logging.getLogger(__name__)


class HeartbeatThread:
    """Calls beat() every interval from a daemon thread while the event loop keeps turning."""

    def __init__(
        self,
        beat: Callable[[], None],
        name: str,
        interval: float,
        loop: asyncio.AbstractEventLoop,
        stall_limit: float,
    ):
        self.beat = beat
        self.name = name
        self.interval = interval
        self.stall_limit = stall_limit
        self._loop = loop
        self._loop_seen = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dps-heartbeat-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (a clean shutdown or a hand-over); returns once no beat is in flight."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(self.interval + 10)

    def abandon(self) -> None:
        """Stop renewing without waiting for the thread (its event loop has ended)."""
        self._stop.set()

    @property
    def loop_lag(self) -> float:
        """Seconds since the event loop last ran this thread's no-op."""
        return time.monotonic() - self._loop_seen

    def _seen(self) -> None:
        self._loop_seen = time.monotonic()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self._loop.call_soon_threadsafe(self._seen)
            except RuntimeError:  # the loop is closed: the process is stopping
                return
            if self.loop_lag > self.stall_limit:
                logger.error(
                    "%s: event loop stuck for %.0f s; no longer renewing its heartbeat", self.name, self.loop_lag
                )
                continue
            try:
                self.beat()
            except Exception as exc:  # Redis away: keep trying, log once per outage
                if not failing:
                    logger.warning("%s: heartbeat failed: %s", self.name, exc)
                failing = True
            else:
                failing = False


def heartbeat_interval(liveness_ttl: float) -> float:
    """About every second, and at least three beats per TTL."""
    return min(1.0, liveness_ttl / 3)


def start_heartbeat(transport, kind: str, name: str, liveness_ttl: float) -> HeartbeatThread | None:
    """A started heartbeat thread for the process, or None if the backend has none (the embedded
    mode: one process, whose loop renews its heartbeats itself)."""
    beat = transport.sync_heartbeat(kind, name)
    if beat is None:
        return None
    thread = HeartbeatThread(
        beat,
        f"{'topic server' if kind == 'topicserver' else kind} {name}",
        interval=heartbeat_interval(liveness_ttl),
        loop=asyncio.get_running_loop(),
        stall_limit=max(30.0, 6 * liveness_ttl),
    )
    thread.start()
    return thread


async def stop_heartbeat(thread: HeartbeatThread | None) -> None:
    """Stop renewing, without blocking the event loop while the thread finishes a beat."""
    if thread is not None:
        await asyncio.to_thread(thread.stop)
