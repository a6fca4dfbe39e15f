"""Following the ring: which topic server owns each of this node's topics, and telling them.

A mixin of ``TopicRingLayer`` (pubsub/layer.py). With the live ring, every ring
generation is adopted within ``ring_poll`` seconds and the topics that changed
owner are announced to their new owner; a Redis that restarted empty (a new
epoch) gets every topic announced again.
"""

from __future__ import annotations

import asyncio
import logging

from pubsub.core import entries
from pubsub.core.ring import HashRing
from pubsub.core.tasks import raise_if_cancelling
from pubsub.exceptions import TransportError
from pubsub.transport.base import inbox_stream

__all__ = ["RingFollowing"]

logger = logging.getLogger("pubsub.layer")


class RingFollowing:
    """Adopts ring generations and re-announces this node's topics to their owners."""

    async def _tell_owners(self, op: str, groups: list[str]) -> None:
        """One sub/unsub per group to its owner, in one round trip (re-announcing, or draining)."""
        if groups:
            logger.info("node %s: %s %d topics at their owners", self.node, op, len(groups))
            items = [(inbox_stream(self.ring.owner(group)), entries.pack(op, group, self.node)) for group in groups]
            if op == "sub":  # and who is present through this node, behind each topic's "sub"
                items += [(inbox_stream(self.ring.owner(t)), data) for t, data in self.presence_entries(groups)]
            await self.transport.append_many(items)

    async def _watch_ring(self) -> None:
        """Follow ring generations (live ring) and notice a Redis that restarted empty."""
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self.ring_poll)
            try:
                epoch = await self.transport.epoch()
                if epoch != self.epoch:
                    logger.warning("node %s: Redis restarted empty; announcing every topic again", self.node)
                    # Owners keep numbering from memory, so the last numbers seen stay valid; ring
                    # generations may start again lower (if every topic server restarted too).
                    self.epoch, self.generation = epoch, -1
                    self._owner_generations.clear()
                    if self.live_ring:
                        await self._follow_ring()
                    await self._tell_owners("sub", list(self._groups))
                elif self.live_ring:
                    await self._follow_ring()
            except TransportError as exc:
                logger.warning("node %s: ring check failed: %s", self.node, exc)

    async def _follow_ring(self) -> None:
        """Adopt a newer ring generation; topics that changed owner are announced to the new owner."""
        generation, members = await self.transport.ring_state()
        if generation == self.generation or not members:
            return
        previous, self.ring, self.generation = self.ring, HashRing(members), generation
        moved = [group for group in self._groups if previous.owner(group) != self.ring.owner(group)]
        logger.info("node %s: ring generation %d %s; %d local topics moved", self.node, generation, members, len(moved))
        await self._tell_owners("sub", moved)
