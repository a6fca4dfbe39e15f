"""Fencing: one numberer per topic, one reader per inbox, whatever a paused process still holds.

A topic server frozen past its liveness TTL (a GC pause, a stalled VM, SIGSTOP) wakes up holding a
batch, sequence numbers and a ring generation that are no longer true, while its successor numbers
the same topics. Before fencing it committed that batch anyway, and nodes dropped one of two
different messages carrying the same number (5-10 % of the messages accepted meanwhile were lost).

The rules, checked by Redis itself (pubsub/transport/redis_scripts.py), never by the owner's memory:

- **Topic fence.** Each topic keeps the newest ring generation that numbered it, next to its number
  and history (one slot). A batch's numbers and history for a topic are stored by one script that
  refuses a generation older than the fence (FENCED) or a first number already used (TAKEN), and
  changes nothing when it refuses. A refused topic's messages are not dropped: TAKEN ones are
  numbered again after the stored number, FENCED ones go to the topic's current owner (a forward,
  as for any message that reached the wrong owner). Nodes get a message only after its number is
  stored, so no two messages ever carry one topic's number.
- **Inbox holder.** Taking over a dead server's inbox raises the inbox's holder to the successor's
  generation; only that or a newer generation moves its cursor. A server that finds its cursor
  taken knows it was given up for dead: it reads the ring again and stops owning what it lost.
- **Committed numbers survive the handover.** A successor raises the fences of every topic it finds
  in the dead inbox before it looks in their histories for the origins numbered already; so what the
  dead server stored before the fence is resent with its number (nodes drop the repeat), and what it
  tries after the fence is refused. This replaces per-server stamps: the history is the record.
- **A retry is not a second numbering.** A commit whose reply was lost (a timeout while Redis was
  frozen, a fan-out that failed after the numbers were stored) is made again as it was; a topic
  whose last number this generation gave to the batch's last message answers OK, not TAKEN, so no
  message is ever numbered twice (subscribers would get it twice, under two numbers).
- **Generations only grow.** A fence above every ring Redis knows (Redis lost the ring: a restart,
  a failover) makes the owner propose a ring past it, so a stale fence never blocks service.

Nodes keep the newest generation per topic too and drop fan-out from an older one
(pubsub/node/delivery.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from pubsub.core import entries
from pubsub.core.ring import HashRing
from pubsub.exceptions import TransportError
from pubsub.transport.base import OK, TAKEN, Numbering, inbox_stream, node_stream

__all__ = ["Fencing", "Pending"]

logger = logging.getLogger("topicserver.server")

_NUMBERING_TRIES = 5  # TAKEN, numbered again: another owner numbered meanwhile (it is fenced now)
_SELF_FORWARD_PAUSE = 0.1  # no newer ring to send fenced messages to yet: do not spin on them
_SEND_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)  # about 3 s of trying


@dataclass(slots=True)
class Pending:
    """A message of this batch for one of this server's topics, to number (seq 0) or to resend."""

    topic: str
    message: bytes
    origin: str
    seq: int  # > 0: numbered and stored before (a resend with that number)
    nodes: tuple[str, ...]


class Fencing:
    """Mixed into TopicServer: numbering a batch under the fences, then delivering it."""

    async def _commit(self, pending: list[Pending], outgoing: list, tail: list, cursor: str) -> None:
        """Number pending under the fences and deliver outgoing, the numbered messages and tail (in
        that order), then move the cursor: one round trip on one Redis when no topic is refused.
        A retry may repeat appends, which nodes and owners drop as repeats; what still fails is
        counted, logged, and seen as a gap."""
        by_topic: dict[str, list[Pending]] = {}
        for message in pending:
            by_topic.setdefault(message.topic, []).append(message)
        renew = self._renewals(set(by_topic)) if self.history_size else set()
        numberings, appends = self._plan(by_topic, renew)
        appends = [*((stream, data, None) for stream, data in outgoing), *appends]
        appends += ((stream, data, None) for stream, data in tail)
        for attempt in range(_NUMBERING_TRIES):
            committed = await self._commit_retrying(numberings, appends, cursor)
            if committed is None:
                return
            verdicts, moved = committed
            refused = {topic: verdict for topic, verdict in verdicts.items() if verdict[0] != OK}
            for numbering in numberings:
                if numbering.topic not in refused:
                    self.sequences[numbering.topic] = max(self.sequences.get(numbering.topic, 0), numbering.last)
            self.stats["node_messages"] += sum(
                1 for _, _, topic in appends if topic is not None and topic not in refused
            )
            if not refused:
                break
            taken = {topic for topic, (verdict, _) in refused.items() if verdict == TAKEN}
            if attempt == _NUMBERING_TRIES - 2:  # still taken: sent on (to itself if need be), not lost
                taken = set()
            for topic in taken:  # numbered by an owner the fence now stops: number after it
                self.stats["numbers_taken"] += 1
                self.sequences[topic] = refused[topic][1]
            fenced = {topic: value for topic, (_, value) in refused.items() if topic not in taken}
            numberings, appends = self._plan({topic: by_topic[topic] for topic in taken}, renew)
            if fenced:
                forwards = await self._forward_fenced({topic: by_topic[topic] for topic in fenced}, fenced)
                appends += ((stream, data, None) for stream, data in forwards)
        if moved is False:
            await self._inbox_was_taken()

    async def _commit_retrying(self, numberings, appends, cursor):
        """transport.commit, retried for about 3 s; None if it kept failing (counted and logged)."""
        for delay in _SEND_RETRY_DELAYS:
            try:
                return await self.transport.commit(
                    self.name, self.generation, numberings, appends, cursor, self.history_size, self.history_ttl
                )
            except TransportError as exc:
                error = exc
                await asyncio.sleep(delay)
        self.stats["lost_node_messages"] += len(appends)
        logger.error("topic server %s lost %d node messages: %s", self.name, len(appends), error)
        return None

    def _plan(self, by_topic: dict[str, list[Pending]], renew: set[str]) -> tuple[list[Numbering], list]:
        """Each topic's numbering after its last known number (resends keep theirs), and its node
        messages in number order, tagged with the topic (left out if its numbers are refused)."""
        numberings, appends = [], []
        for topic, messages in by_topic.items():
            last = max(self.sequences.get(topic, 0), *(message.seq for message in messages))
            kept, seqs = [], []
            for message in messages:
                if message.seq:
                    seq = message.seq
                else:
                    last += 1
                    seq = last
                    kept.append((seq, message.origin, message.message))
                seqs.append((seq, message))
            seqs.sort(key=lambda item: item[0])
            numberings.append(Numbering(topic, kept[0][0] if kept else 0, seqs[-1][0], kept, topic in renew))
            for seq, message in seqs:
                data = self._node_message(topic, seq, message.message)
                appends.extend((node_stream(node), data, topic) for node in message.nodes)
        return numberings, appends

    def _node_message(self, topic: str, seq: int, message: bytes) -> bytes:
        epoch = self._history_epochs.get(topic, ("", 0))[0]
        return entries.pack("msg", topic, seq, message, epoch, self.generation)

    async def _forward_fenced(self, messages: dict[str, list[Pending]], fences: dict[str, int]) -> list:
        """A newer generation numbers these topics: their messages go to its owner, with any number
        they were stored with before."""
        self.stats["fenced"] += sum(len(each) for each in messages.values())
        logger.warning(
            "topic server %s (generation %d) is fenced out of %d topics (fence up to %d); forwarding",
            self.name,
            self.generation,
            len(messages),
            max(fences.values()),
        )
        ring = await self._freshest_ring(max(fences.values()))
        forwards, to_self = [], False
        for topic, pending in messages.items():
            owner = ring.owner(topic) if ring is not None else self.name
            to_self |= owner == self.name
            for message in pending:
                if owner == self.name:
                    self._origins.pop(message.origin, None)  # it comes back: not a repeat then
                entry = entries.pack("fwd", topic, message.message, message.seq, message.origin)
                forwards.append((inbox_stream(owner), entry))
        self.stats["forwarded"] += len(forwards)
        if to_self:
            await asyncio.sleep(_SELF_FORWARD_PAUSE)
        return forwards

    async def _freshest_ring(self, fence: int) -> HashRing | None:
        """The newest ring Redis has (noted for adoption); past the fence if the fence is newer than
        any ring Redis knows (Redis lost its ring; a stale fence must not block the topic)."""
        try:
            await self._watch_ring_once()
            pending = self._pending_ring
            if self.live_ring and (pending is None or pending[0] < fence):
                generation, members = await self.transport.ring_state()
                if members and generation < fence:
                    logger.warning("topic server %s: fence %d is past ring %d; moving on", self.name, fence, generation)
                    await self.transport.propose_ring(generation, members, floor=fence)
                    await self._watch_ring_once()
        except TransportError as exc:
            logger.warning("topic server %s: reading the ring after a fence failed: %s", self.name, exc)
        if self._pending_ring is not None and self._pending_ring[1]:
            return HashRing(self._pending_ring[1])
        return self.ring if self.live_ring else None

    async def _inbox_was_taken(self) -> None:
        """A successor took this server's inbox over (it was given up for dead): until it adopts a
        ring that has it again, its cursor is the successor's."""
        if not self._inbox_taken:
            logger.warning(
                "topic server %s: its inbox was taken over (it was given up for dead); re-reading the ring",
                self.name,
            )
        self._inbox_taken = True
        self.stats["inbox_taken"] += 1
        try:
            await self._watch_ring_once()
        except TransportError as exc:
            logger.warning("topic server %s: ring check failed: %s", self.name, exc)

    async def _reclaim_inbox(self, cursor: str) -> str:
        """Hold this server's inbox at its generation (it is a ring member again); after a takeover,
        resume where the successor stopped forwarding."""
        if self.live_ring and (self.ring is None or self.name not in self.ring.members):
            return cursor
        stored = await self.transport.claim_inbox(self.name, self.generation)
        if self._inbox_taken:
            self._inbox_taken = False
            if stored:
                logger.info("topic server %s: holds its inbox again, from %s", self.name, stored)
                return stored
        return cursor

    async def _committed_numbers(self, batch: list[tuple[str, bytes]]) -> dict[str, int]:
        """entry id -> the number its message was stored with, for a batch that a server (this one
        before a crash, or a dead one) read and may have numbered: its topics are fenced at this
        generation first, so nothing is numbered from it after the look."""
        wanted: dict[str, list[tuple[str, str]]] = {}
        for entry_id, data in batch:
            try:
                fields = entries.unpack(data, entries.INBOX_OPS)
            except entries.MalformedEntry:
                continue
            if fields[0] == "pub":
                wanted.setdefault(fields[1], []).append((entry_id, fields[3]))
            elif fields[0] == "fwd" and not fields[3]:
                wanted.setdefault(fields[1], []).append((entry_id, fields[4]))
        if not wanted:
            return {}
        stored = await self.transport.claim_topics(sorted(wanted), self.generation)
        return {
            entry_id: stored[topic][origin]
            for topic, items in wanted.items()
            for entry_id, origin in items
            if origin in stored.get(topic, {})
        }
