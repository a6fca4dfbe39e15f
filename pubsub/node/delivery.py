"""The node's delivery path: one reader of the node's stream hands each message to its local members.

A mixin of ``TopicRingLayer`` (pubsub/layer.py), which owns the state it uses:
``_groups`` (group -> local channels), ``_mailboxes``, ``_fastlanes`` and
``_last_seq`` (per topic, to drop repeats and count gaps), ``_owner_generations`` (per topic, the
newest ring generation that numbered it: fan-out of an older, fenced owner is dropped, never
delivered ahead of its successor's; topicserver/fencing.py). A message is decoded
once per node; a member with a fastlane (a Phoenix socket) gets the frame
written at once, any other channel gets it in its mailbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pubsub.core import entries
from pubsub.core.messages import BROADCAST_TYPE, PRESENCE_TYPE
from pubsub.core.tasks import raise_if_cancelling
from pubsub.exceptions import TransportError
from pubsub.transport.base import node_stream

__all__ = ["NodeDelivery"]

logger = logging.getLogger("pubsub.layer")

_READ_BATCH = 512
_READ_BLOCK_MS = 1000
_RETRY_DELAY = 0.5
# Yield to the loop after this many deliveries within one batch. Every 2,000 halved the layer
# bench at 10,000 members (228k against 527k deliveries/s): mailbox receivers woke in between.
_DELIVERIES_PER_TURN = 50_000


class NodeDelivery:
    """Reads this node's stream: deliveries, direct sends, remote group changes, owners' notices."""

    def register_fastlane(self, channel: str, fastlane: Callable[[dict], bool]) -> None:
        """Deliver group messages for channel by calling fastlane(message) in the node reader.

        fastlane must not block; it returns False for a message it does not
        handle, which then goes to the channel's mailbox as usual.
        """
        self._fastlanes[channel] = fastlane

    async def _read_node_stream(self, after: str) -> None:
        """This node's one reader: delivery, direct sends and remote group changes."""
        stream = node_stream(self.node)
        while True:
            raise_if_cancelling()
            try:
                batch = await self.transport.read(stream, after, _READ_BATCH, _READ_BLOCK_MS)
            except TransportError as exc:
                logger.warning("node %s: reading %s failed (%s); retrying", self.node, stream, exc)
                await asyncio.sleep(_RETRY_DELAY)
                continue
            if batch:
                appended = self.transport.id_time(batch[-1][0])
                self.stream_lag = max(0.0, time.time() - appended) if appended is not None else 0.0
            since_yield = self.stats["delivered"]
            for entry_id, data in batch:
                after = entry_id
                if self.stats["delivered"] - since_yield >= _DELIVERIES_PER_TURN:
                    # A batch into big rooms is a lot of synchronous writes: let the loop serve
                    # other sockets' frames and replies between entries, not after the whole batch.
                    await asyncio.sleep(0)
                    since_yield = self.stats["delivered"]
                try:
                    await self._handle_node_entry(entries.unpack(data, entries.NODE_OPS))
                except entries.MalformedEntry as exc:
                    self.stats["malformed"] += 1
                    logger.warning("node %s skipped entry %s: %s", self.node, entry_id, exc)
                except Exception:
                    logger.exception("node %s failed on entry %s; carrying on", self.node, entry_id)
                self._node_cursor = entry_id  # where a reader on a later event loop resumes

    async def _handle_node_entry(self, fields: list) -> None:
        op = fields[0]
        if op == "msg":
            _, topic, seq, blob, epoch, generation = fields
            if self._from_older_owner(topic, generation):
                return
            last = self._last_seq.get(topic)
            if seq and last is not None and seq > last + 1 and topic in self._groups:
                await self._fill_gap(topic, last, seq)
            self._deliver_to_group(topic, seq, blob, epoch)
        elif op == "send":
            _, channel, blob = fields
            if not self._mailbox(channel).put(entries.unpack_message(blob)):
                self._count_drop(channel)
        elif op == "gadd":
            _, group, channel = fields
            await self.group_add(group, channel)
        elif op == "gdiscard":
            _, group, channel = fields
            await self._leave_local(group, channel)
        elif op == "owner":
            _, server, token, generation = fields
            if self.live_ring and generation > self.generation:
                await self._follow_ring()
            await self._tell_owners("sub", [group for group in self._groups if self.ring.owner(group) == server])
            await self.transport.ack_barrier(server, self.node, token)
        elif op == "pstate":
            _, topic, state = fields
            self._on_presence_state(topic, state)
        elif op == "tip":
            _, topic, seq = fields
            await self._catch_up(topic, seq)
        elif op == "dropped":
            _, server = fields
            self.stats["dropped_by_owner"] += 1
            logger.warning("node %s: topic server %s had taken this node for dead; announcing again", self.node, server)
            await self._tell_owners("sub", [group for group in self._groups if self.ring.owner(group) == server])

    def _from_older_owner(self, topic: str, generation: int) -> bool:
        """Fan-out numbered under an older ring generation than one already seen for topic (an owner
        that was paused past its TTL): its messages are in the successor's numbers or history."""
        if generation == entries.UNKNOWN_GENERATION or topic not in self._groups:
            return False
        newest = self._owner_generations.get(topic)
        if newest is not None and generation < newest:
            self.stats["from_older_owner"] += 1
            return True
        if newest is None or generation > newest:
            self._owner_generations[topic] = generation
        return False

    def _deliver_to_group(self, topic: str, seq: int, blob: bytes, epoch: str = "") -> None:
        members = self._groups.get(topic)
        if not members:
            return
        if seq:  # 0: not numbered (a presence change)
            last = self._last_seq.get(topic)
            if last is not None:
                if seq <= last:  # a retried append of the owner's: already delivered
                    self.stats["duplicates"] += 1
                    return
                if seq != last + 1:
                    self.stats["sequence_gaps"] += 1
                    logger.warning("node %s: topic %s jumped from seq %d to %d", self.node, topic, last, seq)
                    self._unrecoverable_gap(topic)
            self._last_seq[topic] = seq
        message = entries.unpack_message(blob)
        if seq and message.get("type") == BROADCAST_TYPE:  # DPS's own message type: other types stay as sent
            message["seq"], message["epoch"] = seq, epoch  # a recovering socket's ref: "<epoch>:<seq>"
        if message.get("type") == PRESENCE_TYPE:
            message = self._on_presence_change(topic, message)
            if message is None:  # a quiet change: only the replica needed it
                return
        delivered = 0
        fastlanes = self._fastlanes
        for channel in members:
            fastlane = fastlanes.get(channel)
            if fastlane is not None:
                try:
                    if fastlane(message):
                        delivered += 1
                        continue
                except Exception:
                    self.stats["fastlane_errors"] += 1
                    logger.exception("node %s: fastlane of %s failed", self.node, channel)
                    continue
            if self._mailbox(channel).put(message):
                delivered += 1
            else:
                self._count_drop(channel)
        self.stats["delivered"] += delivered

    def _count_drop(self, channel: str) -> None:
        self.stats["dropped"] += 1
        now = time.monotonic()
        if now - self._last_drop_log >= 1.0:
            self._last_drop_log = now
            logger.warning(
                "node %s: mailbox of %s is full (capacity %d); %d messages dropped so far",
                self.node,
                channel,
                self.get_capacity(channel),
                self.stats["dropped"],
            )
