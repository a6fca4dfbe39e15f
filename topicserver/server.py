"""The topic server: owner of the topics the ring gives it.

It reads its inbox stream, keeps topic -> nodes with local members, stamps each
published message with the topic's next sequence number and appends it once per
node that holds members (not once per subscriber), all appends of one inbox
batch going out in one pipelined round trip. Per topic, messages leave in
sequence order. No Django views here; the runtopicserver command wraps it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from pubsub import entries
from pubsub.transport.base import Transport, inbox_stream, node_stream

__all__ = ["TopicServer"]

logger = logging.getLogger(__name__)


class TopicServer:
    """Membership and fan-out for one ring member."""

    def __init__(self, name: str, transport: Transport, *, batch_size: int = 512, block_ms: int = 1000):
        self.name = name
        self.transport = transport
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.inbox = inbox_stream(name)
        self.topics: dict[str, set[str]] = {}
        self.sequences: dict[str, int] = {}
        self.stats: Counter[str] = Counter()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Read the inbox until cancelled; a bad entry is logged and skipped, never fatal."""
        last_id = await self.transport.last_id(self.inbox)
        logger.info("topic server %s reading %s after %s", self.name, self.inbox, last_id)
        if ready is not None:
            ready.set()
        while True:
            batch = await self.transport.read(self.inbox, last_id, self.batch_size, self.block_ms)
            if not batch:
                continue
            last_id = batch[-1][0]
            outgoing: list[tuple[str, bytes]] = []
            for entry_id, data in batch:
                try:
                    self.handle(entries.unpack(data, entries.INBOX_OPS), outgoing)
                except entries.MalformedEntry as exc:
                    self.stats["malformed"] += 1
                    logger.warning("topic server %s skipped entry %s: %s", self.name, entry_id, exc)
            if outgoing:
                await self.transport.append_many(outgoing)

    def handle(self, fields: list, outgoing: list[tuple[str, bytes]]) -> None:
        """Apply one inbox entry; node appends it causes go to outgoing."""
        op = fields[0]
        if op == "pub":
            _, topic, message = fields
            seq = self.sequences.get(topic, 0) + 1
            self.sequences[topic] = seq
            self.stats["published"] += 1
            nodes = self.topics.get(topic)
            if nodes:
                data = entries.pack("msg", topic, seq, message)
                outgoing.extend((node_stream(node), data) for node in nodes)
                self.stats["node_messages"] += len(nodes)
        elif op == "sub":
            _, topic, node = fields
            self.topics.setdefault(topic, set()).add(node)
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

    def drop_node(self, node: str) -> int:
        """Forget every membership of node (restarted or dead); returns how many topics it held."""
        held = [topic for topic, nodes in self.topics.items() if node in nodes]
        for topic in held:
            self.forget(topic, node)
        if held:
            logger.info("%s: dropped node %s from %d topics", self.name, node, len(held))
        return len(held)
