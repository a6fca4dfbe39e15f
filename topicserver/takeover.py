"""Handing topics over: a server that leaves, and the inboxes of servers that died.

A server that leaves (SIGTERM) unregisters, waits until a ring without it is adopted and keeps
forwarding what still arrives until its inbox is quiet. A dead server's inbox is taken over by the
server the ring gives its name to: it holds the inbox at its own generation, fences the topics
it finds there, and forwards every accepted entry to the topic's new owner with the number the dead
server stored for it, if any (topicserver/fencing.py). It keeps forwarding what still lands there
until the name is back in the ring.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pubsub.core import entries
from pubsub.core.tasks import raise_if_cancelling
from pubsub.transport.base import FIRST_ID, id_order, inbox_stream

__all__ = ["InboxTakeover"]

logger = logging.getLogger("topicserver.server")


class InboxTakeover:
    """Mixed into TopicServer; its state: ``_taken_over`` (dead servers' names), ``_takeover_lock``."""

    async def leave(self) -> None:
        """Hand this server's topics to the others (live ring): unregister, wait until a ring without
        it is adopted, keep forwarding what still arrives until the inbox is quiet. Call while run() runs."""
        self.leaving = True
        # Marked as leaving before it unregisters: its successors' barriers wait until it has adopted
        # the ring without it (it numbers its topics until then; two numbering one topic lose messages).
        await self.transport.heartbeat("leaving", self.name)
        await self._stop_heartbeat()
        await self.transport.forget("topicserver", self.name)
        try:
            await self._hand_over()
        finally:
            await self.transport.forget("leaving", self.name)

    async def _hand_over(self) -> None:
        deadline = time.monotonic() + 3 * self.liveness_ttl
        while time.monotonic() < deadline:
            generation, members = await self.transport.ring_state()
            if self.name not in members and self.generation >= generation:
                break
            # Itself excluded: a run() still starting may have renewed its heartbeat after leave() began.
            if not set(await self.transport.live("topicserver", self.liveness_ttl)) - {self.name}:
                # Nobody is left to hand over to (the whole cluster is stopping): what is
                # still in the inbox waits there for the next server of this name.
                logger.info("topic server %s: no other topic server is running; stopping", self.name)
                return
            await asyncio.sleep(0.05)
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 3 * self.ring_poll:
            # (No cursor yet: a server stopped while starting has served nothing; an empty inbox is quiet.)
            if await self.transport.last_id(self.inbox) != (await self.transport.load_cursor(self.name) or FIRST_ID):
                quiet_since = time.monotonic()
            await asyncio.sleep(0.05)
        logger.info("topic server %s: handed its topics over (generation %d)", self.name, self.generation)

    async def _take_over_inbox(self, gone: str) -> None:
        """A dead member's accepted entries go to their new owners, with any sequence number it stored."""
        async with self._takeover_lock:  # the ring watcher's sweep and a ring adoption may meet here
            self._taken_over.add(gone)
            if gone in await self.transport.live("leaving", 3 * self.liveness_ttl):
                # Still handing over: it serves its inbox until quiet. Read from its cursor now, a
                # batch it is committing would be sent twice; the sweep forwards what is left after.
                return
            await self._forward_dead_inbox(gone)

    async def _forward_dead_inbox(self, gone: str) -> None:
        inbox = inbox_stream(gone)
        # Held at this generation first: the dead server, if it was only paused, can no longer move
        # its cursor, and the topics fenced below stop its numbering.
        cursor = await self.transport.claim_inbox(gone, self.generation) or FIRST_ID
        # Up to the inbox's end as it is now: entries keep arriving while processes still send there,
        # and a pass that chased them held the takeover lock (and so this server's ack of the next
        # generation) until the server came back: every barrier timed out waiting for it.
        tail = id_order(await self.transport.last_id(inbox))
        moved = 0
        while id_order(cursor) < tail:
            raise_if_cancelling()
            batch = await self.transport.read(inbox, cursor, 10_000, 0)
            if not batch:
                break
            stored = await self._committed_numbers(batch)
            outgoing = []
            for entry_id, data in batch:
                try:
                    fields = entries.unpack(data, entries.INBOX_OPS)
                except entries.MalformedEntry:
                    continue
                if fields[0] in ("pub", "fwd"):
                    outgoing.append(self._forward(fields, stored.get(entry_id, 0)))
                elif fields[0] in ("sub", "unsub", "track", "untrack", "plist", "hist"):  # (not "hello")
                    outgoing.append((inbox_stream(self.owner(fields[1])), data))
            if not await self.transport.deliver(gone, self.generation, outgoing, batch[-1][0]):
                logger.info("topic server %s: %s holds its inbox again; stopped forwarding it", self.name, gone)
                break
            moved += len(outgoing)
            cursor = batch[-1][0]
        if moved:  # a server that left gracefully handed everything over already
            logger.info("topic server %s: took over %d entries of the dead %s", self.name, moved, gone)

    def _forward(self, fields: list, stored: int) -> tuple[str, bytes]:
        """A pub or fwd passed on to its topic's owner by this ring, with the number it was stored with."""
        topic, message = fields[1], fields[2]
        if fields[0] == "fwd":
            seq, origin = fields[3] or stored, fields[4]
        else:
            seq, origin = stored, fields[3]
        self.stats["forwarded"] += 1
        return inbox_stream(self.owner(topic)), entries.pack("fwd", topic, message, seq, origin)

    async def _sweep_dead_inboxes(self) -> None:
        """Keep forwarding what still lands in an inbox taken over from a dead server (an append
        made by a process that had not yet adopted the new ring), until its name returns."""
        if self.ring is None:
            return
        for gone in sorted(self._taken_over):
            if gone in self.ring.members or self.ring.owner(gone) != self.name:
                self._taken_over.discard(gone)
            else:
                await self._take_over_inbox(gone)
