"""A node's liveness: its heartbeat (from a thread, see pubsub/core/heartbeat.py) and its snapshot.

A mixin of ``TopicRingLayer`` (pubsub/layer.py). Owners forget a node whose
heartbeat expired; the snapshot is what the admin page shows of the node.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from pubsub.core.heartbeat import heartbeat_interval, start_heartbeat, stop_heartbeat
from pubsub.core.messages import CONTROL_GROUP
from pubsub.core.rates import RateMeter
from pubsub.core.tasks import raise_if_cancelling
from pubsub.exceptions import TransportError

__all__ = ["NodeLiveness"]

logger = logging.getLogger("pubsub.layer")


class NodeLiveness:
    """Renews the node's heartbeat and publishes its snapshot."""

    def _start_heartbeat(self) -> None:
        self._heartbeat = start_heartbeat(self.transport, "node", self.node, self.liveness_ttl)

    async def _stop_heartbeat(self) -> None:
        heartbeat, self._heartbeat = self._heartbeat, None
        await stop_heartbeat(heartbeat)

    @property
    def heartbeat_interval(self) -> float:
        return heartbeat_interval(self.liveness_ttl)

    async def _keep_alive(self) -> None:
        """Renew this node's heartbeat and publish its snapshot for the admin page."""
        rate = RateMeter()
        while True:
            try:
                if self.draining:
                    return
                if self._heartbeat is None:
                    await self.transport.heartbeat("node", self.node)
                snapshot = self.snapshot(rate)
                await self.transport.put_snapshot("node", self.node, orjson.dumps(snapshot), 3 * self.liveness_ttl)
            except TransportError as exc:
                logger.warning("node %s: heartbeat failed: %s", self.node, exc)
            raise_if_cancelling()
            await asyncio.sleep(self.heartbeat_interval)

    def snapshot(self, rate: RateMeter | None = None) -> dict:
        """What this node reports about itself: counters, connections, local members per topic."""
        stats = dict(self.stats)
        coalescer = getattr(self.transport, "appends", None)
        if coalescer is not None:  # what coalescing saves: appends per Redis round trip
            stats["appends"], stats["append_round_trips"] = coalescer.appends, coalescer.pipelines
        return {
            "name": self.node,
            "started_at": self.started_at,
            "generation": self.generation,  # the ring generation it follows (runcluster waits for every node's)
            "at": time.time(),
            "stats": stats,
            "connections": stats.get("connections_opened", 0) - stats.get("connections_closed", 0),
            "channels": len(self._mailboxes),
            "deliveries_per_s": rate.per_second(stats.get("delivered", 0)) if rate else None,
            "topics": {group: len(members) for group, members in self._groups.items() if group != CONTROL_GROUP},
        }
