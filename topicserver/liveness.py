"""A topic server's liveness and reports: its heartbeat, the nodes it gives up for dead, its snapshot.

Liveness: the server renews its heartbeat (from a thread where the backend allows, so a busy server
is not taken for a dead one) and forgets nodes whose heartbeat expired (a node killed with -9 leaves
no ghosts). The snapshot is what the admin page and the metrics show of it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from pubsub.core import entries
from pubsub.core.messages import CONTROL_GROUP
from pubsub.core.rates import RateMeter
from pubsub.core.tasks import raise_if_cancelling
from pubsub.exceptions import TransportError
from pubsub.transport.base import node_stream

__all__ = ["Liveness"]

logger = logging.getLogger("topicserver.server")

_SUMMARY_INTERVAL = 60.0


class Liveness:
    """Mixed into TopicServer."""

    async def _keep_alive(self) -> None:
        """Renew this server's heartbeat; forget nodes whose heartbeat expired; log a summary now and then."""
        last_summary = (0.0, None)
        rate = RateMeter()
        while True:
            raise_if_cancelling()
            await asyncio.sleep(min(1.0, self.liveness_ttl / 3))
            last_summary = self._log_summary(*last_summary)
            try:
                await self._check_epoch()
                if not self.leaving and self._heartbeat is None:
                    await self.transport.heartbeat("topicserver", self.name)
                snapshot = orjson.dumps(self.snapshot(rate))
                await self.transport.put_snapshot("topicserver", self.name, snapshot, 3 * self.liveness_ttl)
                live = await self.transport.live("node", self.liveness_ttl)
            except TransportError as exc:
                logger.warning("topic server %s: liveness check failed: %s", self.name, exc)
                continue
            if time.monotonic() < self._trust_registry_after:
                continue
            expired = self.node_topics.keys() - live.keys()
            for node in expired:
                logger.info("topic server %s: node %s missed its heartbeat", self.name, node)
                self.stats["expired_nodes"] += 1
                self.drop_node(node)
            if expired:  # a node that was only slow reads this and announces its members again
                notice = entries.pack("dropped", self.name)
                try:
                    await self.transport.append_many([(node_stream(node), notice) for node in expired])
                except TransportError as exc:
                    logger.warning("topic server %s: telling dropped nodes failed: %s", self.name, exc)

    def user_topics(self) -> int:
        """Topics with members on some node, less the nodes' control group."""
        return len(self.topics) - (CONTROL_GROUP in self.topics)

    def snapshot(self, rate: RateMeter | None = None) -> dict:
        """What this server reports about itself: counters, and per topic its nodes, last seq and rate."""
        now = time.monotonic()
        elapsed = now - self._snapshot_at
        topics = {}
        for topic, nodes in self.topics.items():
            if topic == CONTROL_GROUP:  # the nodes' own channel for orders, not a user's topic
                continue
            seq = self.sequences.get(topic, 0)
            previous = self._snapshot_sequences.get(topic, seq)
            topics[topic] = {
                "nodes": sorted(nodes),
                "seq": seq,
                "per_s": (seq - previous) / elapsed if elapsed else 0.0,
                "present": self.presence.counts(topic),  # (clients, users)
            }
        self._snapshot_at = now
        self._snapshot_sequences = {topic: info["seq"] for topic, info in topics.items()}
        return {
            "name": self.name,
            "started_at": self.started_at,
            "at": time.time(),
            "stats": dict(self.stats),
            "published_per_s": rate.per_second(self.stats["published"]) if rate else None,
            "inbox_lag": self.inbox_lag,
            "topics": topics,
        }

    def _log_summary(self, logged_at: float, logged: tuple | None) -> tuple[float, tuple | None]:
        now = asyncio.get_running_loop().time()
        summary = (self.user_topics(), len(self.node_topics), self.stats["published"], self.stats["node_messages"])
        if now - logged_at < _SUMMARY_INTERVAL or summary == logged:
            return logged_at, logged
        logger.info(
            "topic server %s: %d topics with members on %d nodes; %d published, %d node messages so far",
            self.name,
            *summary,
        )
        return now, summary
