"""The owner's side of history: each topic's epoch, its expiry, and answering what nodes ask of it.

The messages themselves are stored with their numbers, under the topic's fence
(topicserver/fencing.py); this keeps what goes with them.
"""

from __future__ import annotations

import logging
import time

from pubsub.core import entries
from pubsub.exceptions import TransportError

__all__ = ["HistoryKeeping", "IDLE_SEQUENCES"]

logger = logging.getLogger("topicserver.server")

IDLE_SEQUENCES = 100_000  # numbers (and epochs) of topics nobody holds kept in memory, at most


class HistoryKeeping:
    """Mixed into TopicServer; its state: ``_history_epochs``, ``_history_renewed``, ``_history_asks``."""

    async def _load_history_epochs(self, topics) -> None:
        """Know each published topic's history epoch; asked again after half a TTL (the history,
        and with it the epoch, expires after a TTL without messages)."""
        if not self.history_size:
            return
        now = time.monotonic()
        stale = [
            topic
            for topic in topics
            if self.owner(topic) == self.name
            and (topic not in self._history_epochs or now - self._history_epochs[topic][1] > self.history_ttl / 2)
        ]
        if stale:
            epochs = await self.transport.history_epochs(stale, self.history_ttl)
            self._history_epochs.update({topic: (epoch, now) for topic, epoch in epochs.items()})
            if len(self._history_epochs) > 4 * IDLE_SEQUENCES:  # bounded: the longest unchecked go
                oldest = sorted(self._history_epochs, key=lambda t: self._history_epochs[t][1])
                for topic in oldest[:IDLE_SEQUENCES]:
                    del self._history_epochs[topic]

    def _renewals(self, topics: set[str]) -> set[str]:
        """Which of topics' history expiries to renew with this batch: new ones, and others every
        tenth of the TTL (an XADD keeps a key's expiry, so renewing it per message would be waste)."""
        now = time.monotonic()
        due = {topic for topic in topics if now - self._history_renewed.get(topic, -1e9) > self.history_ttl / 10}
        self._history_renewed.update(dict.fromkeys(due, now))
        if len(self._history_renewed) > 4 * IDLE_SEQUENCES:  # bounded: forget the longest-renewed
            for topic in sorted(self._history_renewed, key=self._history_renewed.get)[:IDLE_SEQUENCES]:
                del self._history_renewed[topic]
        return due

    async def _answer_history_asks(self) -> None:
        """``{"epoch", "seq", "first", "messages": [[seq, message], ...]}`` after each asker's seq."""
        asks, self._history_asks = self._history_asks, []
        if asks:
            try:
                await self._load_history_epochs({topic for topic, _, _ in asks})
            except TransportError as exc:
                logger.warning("topic server %s: history epochs unavailable: %s", self.name, exc)
                return
        for topic, key, after in asks:
            kept = {}
            try:  # never raises: the batch is committed already (the asker times out and says so)
                if topic not in self.sequences:
                    self.sequences[topic] = (await self.transport.load_sequences([topic])).get(topic, 0)
                if self.history_size and after < self.sequences[topic]:  # (a fresh start needs no messages)
                    kept = dict(await self.transport.history(topic))
            except TransportError as exc:
                logger.warning("topic server %s: reading the history of %s failed: %s", self.name, topic, exc)
                continue
            answer = {
                "epoch": self._history_epochs.get(topic, ("", 0))[0],
                "seq": self.sequences.get(topic, 0),
                "first": min(kept) if kept else None,
                "messages": [[seq, kept[seq]] for seq in sorted(kept) if seq > after],
            }
            self._replies.append((key, entries.pack_message(answer)))

    def _trim_sequences(self) -> None:
        """Keep the sequence of a topic nobody holds (a quick rejoin continues it), within a bound;
        over it, the oldest half of the idle ones go at once, so a trim is rare (a trimmed topic's
        number is read back from Redis when it is next published to)."""
        excess = len(self.sequences) - len(self.topics) - IDLE_SEQUENCES
        if excess > 0:
            excess += IDLE_SEQUENCES // 2
            idle = [topic for topic in self.sequences if topic not in self.topics][:excess]
            for topic in idle:
                del self.sequences[topic]
