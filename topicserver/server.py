"""The topic server: owner of the topics the ring gives it.

It reads its inbox stream, keeps topic -> nodes with local members, stamps each
published message with the topic's next sequence number and appends it once per
node that holds members (not once per subscriber), all appends of one inbox
batch going out in one pipelined round trip. Per topic, messages leave in
sequence order. No Django views here; the runtopicserver command wraps it.

Liveness: it renews its own heartbeat, and forgets the memberships of nodes
whose heartbeat is older than the TTL (a node killed with -9 leaves no ghosts).
When it starts, it tells every live node, which re-announce the topics they
hold that it owns, so a restarted server gets its membership back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import orjson

from pubsub import entries
from pubsub.exceptions import TransportError
from pubsub.rates import RateMeter
from pubsub.tasks import stop_tasks
from pubsub.transport.base import Transport, inbox_stream, node_stream

__all__ = ["TopicServer"]

logger = logging.getLogger(__name__)

_RETRY_DELAY = 0.5
_SEND_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)  # about 3 s of trying
_SUMMARY_INTERVAL = 60.0
_IDLE_SEQUENCES = 100_000


class TopicServer:
    """Membership and fan-out for one ring member."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        *,
        liveness_ttl: float = 5.0,
        batch_size: int = 512,
        block_ms: int = 1000,
    ):
        self.name = name
        self.transport = transport
        self.liveness_ttl = liveness_ttl
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.inbox = inbox_stream(name)
        self.topics: dict[str, set[str]] = {}  # topic -> nodes holding members
        self.node_topics: dict[str, set[str]] = {}  # node -> its topics here (the inverse index)
        self.sequences: dict[str, int] = {}
        self.stats: Counter[str] = Counter()
        self.started_at = time.time()
        self.inbox_lag = 0.0
        self._snapshot_at = time.monotonic()
        self._snapshot_sequences: dict[str, int] = {}

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Serve until cancelled; a bad entry or a lost connection is logged, never fatal."""
        await self.transport.heartbeat("topicserver", self.name)
        last_id = await self.transport.last_id(self.inbox)
        await self._claim_ownership()
        logger.info("topic server %s reading %s after %s", self.name, self.inbox, last_id)
        if ready is not None:
            ready.set()
        keep_alive = asyncio.get_running_loop().create_task(self._keep_alive(), name=f"dps-keep-alive-{self.name}")
        try:
            await self._read_inbox(last_id)
        finally:
            await stop_tasks([keep_alive])

    async def _read_inbox(self, last_id: str) -> None:
        while True:
            try:
                batch = await self.transport.read(self.inbox, last_id, self.batch_size, self.block_ms)
            except TransportError as exc:
                logger.warning("topic server %s: reading its inbox failed (%s); retrying", self.name, exc)
                await asyncio.sleep(_RETRY_DELAY)
                continue
            if not batch:
                continue
            last_id = batch[-1][0]
            appended = self.transport.id_time(last_id)
            self.inbox_lag = max(0.0, time.time() - appended) if appended is not None else 0.0
            outgoing: list[tuple[str, bytes]] = []
            for entry_id, data in batch:
                try:
                    self.handle(entries.unpack(data, entries.INBOX_OPS), outgoing)
                except entries.MalformedEntry as exc:
                    self.stats["malformed"] += 1
                    logger.warning("topic server %s skipped entry %s: %s", self.name, entry_id, exc)
                except Exception:
                    logger.exception("topic server %s failed on entry %s; carrying on", self.name, entry_id)
            if outgoing:
                await self._send(outgoing)

    async def _send(self, outgoing: list[tuple[str, bytes]]) -> None:
        """Append the batch's node entries, retrying a while; a retry may repeat entries, which
        nodes drop by sequence number. What still fails is counted, logged, and seen as a gap."""
        for delay in _SEND_RETRY_DELAYS:
            try:
                await self.transport.append_many(outgoing)
                return
            except TransportError as exc:
                error = exc
                await asyncio.sleep(delay)
        self.stats["lost_node_messages"] += len(outgoing)
        logger.error("topic server %s lost %d node messages: %s", self.name, len(outgoing), error)

    async def _claim_ownership(self) -> None:
        """Ask every live node to re-announce the topics it holds that this server owns."""
        nodes = await self.transport.live("node", self.liveness_ttl)
        if nodes:
            announcement = entries.pack("owner", self.name)
            await self.transport.append_many([(node_stream(node), announcement) for node in nodes])

    async def _keep_alive(self) -> None:
        """Renew this server's heartbeat; forget nodes whose heartbeat expired; log a summary now and then."""
        last_summary = (0.0, None)
        rate = RateMeter()
        while True:
            await asyncio.sleep(self.liveness_ttl / 3)
            last_summary = self._log_summary(*last_summary)
            try:
                await self.transport.heartbeat("topicserver", self.name)
                snapshot = orjson.dumps(self.snapshot(rate))
                await self.transport.put_snapshot("topicserver", self.name, snapshot, 3 * self.liveness_ttl)
                live = await self.transport.live("node", self.liveness_ttl)
            except TransportError as exc:
                logger.warning("topic server %s: liveness check failed: %s", self.name, exc)
                continue
            for node in self.node_topics.keys() - live.keys():
                logger.info("topic server %s: node %s missed its heartbeat", self.name, node)
                self.stats["expired_nodes"] += 1
                self.drop_node(node)

    def snapshot(self, rate: RateMeter | None = None) -> dict:
        """What this server reports about itself: counters, and per topic its nodes, last seq and rate."""
        now = time.monotonic()
        elapsed = now - self._snapshot_at
        topics = {}
        for topic, nodes in self.topics.items():
            seq = self.sequences.get(topic, 0)
            previous = self._snapshot_sequences.get(topic, seq)
            topics[topic] = {
                "nodes": sorted(nodes),
                "seq": seq,
                "per_s": (seq - previous) / elapsed if elapsed else 0.0,
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
        summary = (len(self.topics), len(self.node_topics), self.stats["published"], self.stats["node_messages"])
        if now - logged_at < _SUMMARY_INTERVAL or summary == logged:
            return logged_at, logged
        logger.info(
            "topic server %s: %d topics with members on %d nodes; %d published, %d node messages so far",
            self.name,
            *summary,
        )
        return now, summary

    def handle(self, fields: list, outgoing: list[tuple[str, bytes]]) -> None:
        """Apply one inbox entry; node appends it causes go to outgoing."""
        op = fields[0]
        if op == "pub":
            _, topic, message = fields
            self.stats["published"] += 1
            nodes = self.topics.get(topic)
            if nodes:  # a topic nobody holds needs no sequence number: nobody would see it
                seq = self.sequences.get(topic, 0) + 1
                self.sequences[topic] = seq
                data = entries.pack("msg", topic, seq, message)
                outgoing.extend((node_stream(node), data) for node in nodes)
                self.stats["node_messages"] += len(nodes)
        elif op == "sub":
            _, topic, node = fields
            self.topics.setdefault(topic, set()).add(node)
            if node not in self.node_topics:
                logger.info("topic server %s: node %s holds members of its topics", self.name, node)
            self.node_topics.setdefault(node, set()).add(topic)
            logger.debug("%s: node %s subscribes to %s", self.name, node, topic)
        elif op == "unsub":
            _, topic, node = fields
            self.forget(topic, node)
        elif op == "hello":
            self.drop_node(fields[1])

    def forget(self, topic: str, node: str) -> None:
        nodes = self.topics.get(topic)
        if nodes is not None:
            nodes.discard(node)
            if not nodes:
                del self.topics[topic]
                self._trim_sequences()
        held = self.node_topics.get(node)
        if held is not None:
            held.discard(topic)
            if not held:
                del self.node_topics[node]

    def _trim_sequences(self) -> None:
        """Keep the sequence of a topic nobody holds (a quick rejoin continues it), within a bound."""
        excess = len(self.sequences) - len(self.topics) - _IDLE_SEQUENCES
        if excess > 0:
            idle = [topic for topic in self.sequences if topic not in self.topics][:excess]
            for topic in idle:
                del self.sequences[topic]

    def drop_node(self, node: str) -> int:
        """Forget every membership of node (restarted or dead); returns how many topics it held."""
        held = list(self.node_topics.get(node, ()))
        for topic in held:
            self.forget(topic, node)
        if held:
            logger.info("topic server %s: dropped node %s from %d topics", self.name, node, len(held))
        return len(held)
