"""Draining a node: close its sockets in batches, leave its topics, leave the registry.

A mixin of ``TopicRingLayer`` (pubsub/layer.py). Run on SIGTERM for a daphne
node, so a rolling restart moves clients to other nodes (phoenix.js reconnects
after 4001) instead of leaving owners to wait out the node's heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable

__all__ = ["Draining"]

logger = logging.getLogger("pubsub.layer")


class Draining:
    """Closes this node's connections and unsubscribes it everywhere."""

    def register_closer(self, channel: str, close: Callable[[], None]) -> None:
        """How to close channel's connection when this node drains (close must not block)."""
        self._closers[channel] = close

    async def drain(self, batch: int = 500, pause: float = 0.05) -> None:
        """Stop serving: close the connections in batches (clients reconnect to another node), tell
        the owners this node holds nothing, and leave the registry."""
        closers = list(self._closers.values())
        logger.info("node %s: draining %d connections", self.node, len(closers))
        for first in range(0, len(closers), batch):
            for close in closers[first : first + batch]:
                try:
                    close()
                except Exception:
                    logger.exception("node %s: closing a connection failed", self.node)
            await asyncio.sleep(pause)
        groups, self._groups = list(self._groups), {}
        await self._tell_owners("unsub", groups)
        self.draining = True
        await self._stop_heartbeat()
        await self.transport.forget("node", self.node)
        logger.info("node %s: drained; left %d topics", self.node, len(groups))

    def _drain_on_sigterm(self) -> None:
        """Run drain() when SIGTERM arrives, then hand the signal to the handler it replaced (daphne's
        Twisted reactor stops on it). Installed once the server runs, so it comes after Twisted's."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)

        async def drain_then_stop(signum, frame):
            try:
                await asyncio.wait_for(self.drain(), 4 * self.liveness_ttl)
            except Exception:
                logger.exception("node %s: draining failed; stopping anyway", self.node)
            signal.signal(signal.SIGTERM, previous)
            if callable(previous):
                previous(signum, frame)
            else:
                os.kill(os.getpid(), signal.SIGTERM)

        def on_sigterm(signum, frame):
            loop.call_soon_threadsafe(lambda: loop.create_task(drain_then_stop(signum, frame)))

        signal.signal(signal.SIGTERM, on_sigterm)
