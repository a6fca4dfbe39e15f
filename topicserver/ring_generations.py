"""Ring generations (live ring): proposing, noticing and adopting them, and the barrier after each.

The members of a live ring are the registered topic servers; a change gets a new generation
(compare-and-set in Redis), which each server adopts at a batch boundary. Generations only grow,
even past a Redis that restarted empty: a proposal is above every generation its proposer has
seen (fences compare them, topicserver/fencing.py).

Barrier: before serving a backlog (at start, or after adopting a generation) the server asks every
live node to adopt its generation, to re-announce the topics it owns here and to acknowledge; with a
live ring it also waits until every live topic server has adopted the generation. The backlog is
then served membership first, so nobody misses a message accepted before.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from pubsub.core import entries
from pubsub.core.ring import HashRing
from pubsub.core.tasks import raise_if_cancelling
from pubsub.exceptions import TransportError
from pubsub.transport.base import node_stream

__all__ = ["RingGenerations"]

logger = logging.getLogger("topicserver.server")

_RING_RECHECK = 0.1  # at most this often, entries that only a newer ring sends make the ring be read


class RingGenerations:
    """Mixed into TopicServer; its state: ``ring``, ``generation``, ``_pending_ring``, ``_highest_generation``."""

    async def _watch_ring(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self.ring_poll)
            try:
                await self._watch_ring_once()
                await self._sweep_dead_inboxes()
            except TransportError as exc:
                logger.warning("topic server %s: ring check failed: %s", self.name, exc)

    def _signs_of_a_newer_ring(self, batch: list[tuple[str, bytes]]) -> bool:
        """Entries only a newer ring would send here: a forward, or a topic this ring gives another
        server. Then the ring is checked at once rather than at the next poll, so they are not
        passed on by a stale ring (to a dead server's inbox, where they would wait for good)."""
        if not self.live_ring or time.monotonic() - self._ring_checked_at < _RING_RECHECK:
            return False
        for _, data in batch:
            try:
                fields = entries.unpack(data, entries.INBOX_OPS)
            except entries.MalformedEntry:
                continue
            if fields[0] == "fwd" or (fields[0] != "hello" and self.owner(fields[1]) != self.name):
                self._ring_checked_at = time.monotonic()
                return True
        return False

    async def _watch_ring_once(self) -> None:
        """Propose the live members as the ring when they changed; note a newer generation to adopt."""
        if not self.live_ring:
            return
        await self._check_epoch()
        live = sorted(await self.transport.live("topicserver", self.liveness_ttl))
        generation, members = await self.transport.ring_state()
        if (
            self.name in live
            and members != live
            and not self.leaving
            and time.monotonic() >= self._trust_registry_after
        ):
            proposed = await self.transport.propose_ring(generation, live, floor=self._highest_generation)
            if proposed is not None:
                generation, members = proposed, live
                logger.info("topic server %s: ring generation %d is %s", self.name, generation, members)
            else:  # another server was first: note its generation instead
                generation, members = await self.transport.ring_state()
        if (generation != self.generation or self._ring_lost) and members:
            self._pending_ring = (generation, members)

    async def _join_live_ring(self) -> None:
        """At start: wait (a bounded while) until some ring generation is noted, then adopt it.

        Several servers starting together race to propose the first ring; a proposal that lost
        leaves nothing noted until the winner's generation is read, so read again rather than
        adopt nothing (that crashed one of three servers started at once).
        """
        deadline = time.monotonic() + self.liveness_ttl
        while True:
            raise_if_cancelling()
            await self._watch_ring_once()
            if self._pending_ring is not None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        if self._pending_ring is not None:
            await self._adopt_pending_ring()

    async def _check_epoch(self) -> None:
        """Redis restarted empty: its registries are empty until every process renews its heartbeat,
        so for one TTL nobody counts as dead and no ring is proposed."""
        epoch = await self.transport.epoch()
        if epoch != self.epoch:
            self._history_epochs.clear()  # lost with Redis: every topic's history starts a new epoch
            self._history_renewed.clear()
            if self.epoch:
                logger.warning("topic server %s: Redis restarted empty; trusting no registry for a TTL", self.name)
                self._trust_registry_after = time.monotonic() + self.liveness_ttl
                # Adopt the next ring Redis has, whatever its number; fence with the old one until then
                # (Redis lost the fences with it, and the next ring is proposed past it).
                self._ring_lost = True
            self.epoch = epoch

    async def _adopt_pending_ring(self) -> None:
        """Switch to the noted generation at a batch boundary; take over dead members' inboxes; acknowledge."""
        if self._pending_ring is None:
            return
        generation, members = self._pending_ring
        self._pending_ring = None
        self._ring_lost = False
        previous = self.ring
        self.ring, self.generation = HashRing(members), generation
        self._highest_generation = max(self._highest_generation, generation)
        for topic in list(self.sequences):  # a topic that changed owner: reload its number when needed
            if previous is None or previous.owner(topic) != self.ring.owner(topic):
                del self.sequences[topic]
        for topic in list(self.presence.topics.keys() | self.presence.pending.keys()):
            if self.ring.owner(topic) != self.name:  # its new owner has it from the nodes' re-announcements
                self.presence.forget_topic(topic)
        live = set(await self.transport.live("topicserver", self.liveness_ttl))
        for gone in sorted(set(previous.members if previous else ()) - set(members) - live):
            if self.ring.owner(gone) == self.name:
                await self._take_over_inbox(gone)
        # Acknowledged once no sweep of an inbox is under way: a server back in this ring resumes
        # its inbox after every server's ack, where the last forwarder stopped.
        async with self._takeover_lock:
            await self.transport.ack_generation(self.name, generation)
        self.stats["ring_changes"] += 1

    async def _barrier(self) -> None:
        """Ask live nodes to re-announce (and adopt this ring generation); wait for them and for the
        other topic servers to have adopted it, for at most two liveness TTLs."""
        token = f"{self.generation}:{secrets.token_hex(4)}"
        nodes = set(await self.transport.live("node", self.liveness_ttl))
        if nodes:
            announcement = entries.pack("owner", self.name, token, self.generation)
            await self.transport.append_many([(node_stream(node), announcement) for node in nodes])
        deadline = time.monotonic() + 2 * self.liveness_ttl
        while time.monotonic() < deadline:
            acks = await self.transport.barrier_acks(self.name)
            live_nodes = nodes & set(await self.transport.live("node", self.liveness_ttl))
            waiting = {node for node in live_nodes if acks.get(node) != token}
            if self.live_ring:
                generations = await self.transport.generation_acks()
                servers = set(await self.transport.live("topicserver", self.liveness_ttl))
                servers |= set(await self.transport.live("leaving", 3 * self.liveness_ttl)) - {self.name}
                waiting |= {s for s in servers if generations.get(s, -1) < self.generation}
            if not waiting:
                return
            await asyncio.sleep(0.02)
        logger.warning("topic server %s: barrier %s timed out waiting for %s", self.name, token, sorted(waiting))
