"""A node's side of history: filling a gap in a topic's sequence from its owner's history, and
telling recovering sockets when it cannot (they rejoin, and recover or learn they cannot).

Each topic's owner keeps its last messages (topicserver/server.py, DPS_HISTORY_SIZE and
DPS_HISTORY_TTL) under an epoch that changes whenever the history was lost. A socket that joins
with ``recover`` gets every broadcast with the ref ``"<epoch>:<seq>"`` (pubsub/socket/recovery.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pubsub.exceptions import TransportError

__all__ = ["NodeHistory", "GAP_TIMEOUT"]

logger = logging.getLogger("pubsub.layer")

GAP_TIMEOUT = 1.0  # seconds the node's reader waits for a gap's messages before giving up on them


class NodeHistory:
    """Mixed into TopicRingLayer; its state lives in _reset (``_gap_handlers``)."""

    def register_gap_handler(self, channel: str, handler: Callable[[str], None]) -> None:
        """handler(topic) is called when channel's topic lost messages the history cannot give back."""
        self._gap_handlers[channel] = handler

    async def history_after(self, topic: str, after: int, timeout: float = 5.0) -> dict:
        """The owner's answer: ``{"epoch", "seq", "first", "messages": [[seq, message], ...]}``."""
        return await self.ask_owner(topic, "hist", after, timeout=timeout)

    async def _fill_gap(self, topic: str, last: int, seq: int) -> None:
        """Messages last+1 .. seq-1 never reached this node: deliver them from the history, in order."""
        try:
            answer = await self.history_after(topic, last, timeout=GAP_TIMEOUT)
        except TransportError as exc:
            logger.warning("node %s: no history for the gap in %s (%s)", self.node, topic, exc)
            return
        missing = {s: message for s, message in answer["messages"] if last < s < seq}
        if len(missing) != seq - last - 1:
            return  # delivering seq will count the gap and tell recovering sockets
        for s in range(last + 1, seq):
            self._deliver_to_group(topic, s, missing[s], answer["epoch"])
        self.stats["gaps_filled"] += 1
        logger.info("node %s: filled the gap %d..%d in %s from its history", self.node, last + 1, seq - 1, topic)

    async def _catch_up(self, topic: str, tip: int) -> None:
        """The owner numbered up to tip when it took this node's sub. A node behind it was taken for
        dead (frozen, cut off) while messages were numbered: fill them in now, since no later message
        may come to show the gap. Not filled (history off or gone): the next message counts the gap.
        Behind what: the last message this node delivered for the topic, or, before any, the tip of
        its first sub (what was numbered before that came before its members joined)."""
        if topic not in self._groups:
            return
        last = self._last_seq.get(topic, self._first_tips.get(topic))
        if last is None:
            self._first_tips[topic] = tip
        elif tip > last:
            await self._fill_gap(topic, last, tip + 1)

    def _unrecoverable_gap(self, topic: str) -> None:
        for channel in self._groups.get(topic, ()):
            handler = self._gap_handlers.get(channel)
            if handler is not None:
                handler(topic)
