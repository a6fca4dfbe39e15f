"""Who is in each topic, held by the topic's owner: Phoenix presence with one authority.

A node tracks a socket's identity (the key) in a topic with a meta that carries a unique
``phx_ref``; the owner keeps every meta, and announces changes to the topic's nodes as
diffs, coalesced per topic over a short window: 10,000 members arriving make a handful of
diffs, not 10,000. A re-announced meta (after a failover or a Redis restart) is "quiet":
the nodes' replicas learn it, clients are not told again about someone who never left.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from pubsub.core.messages import PRESENCE_TYPE

__all__ = ["PresenceTable", "Diff", "PRESENCE_TYPE"]


Metas = dict[str, dict[str, dict]]  # key -> phx_ref -> meta


class Diff:
    """Changes to one topic's presence not announced yet."""

    __slots__ = ("joins", "leaves", "quiet", "due")

    def __init__(self, due: float):
        self.joins: Metas = {}
        self.leaves: Metas = {}
        self.quiet: Metas = {}
        self.due = due

    def as_message(self) -> dict:
        """The layer message nodes turn into ``presence_diff`` frames (quiet joins only update replicas)."""
        return {
            "type": PRESENCE_TYPE,
            "joins": _wire(self.joins),
            "leaves": _wire(self.leaves),
            "quiet": _wire(self.quiet),
        }


def _wire(metas: Metas) -> dict:
    """``{key: {"metas": [meta, ...]}}``, what phoenix.js reads."""
    return {key: {"metas": list(by_ref.values())} for key, by_ref in metas.items() if by_ref}


class PresenceTable:
    """Every topic's presence on one owner: who, on which node, and what is still to announce."""

    def __init__(self, window: float = 0.1):
        self.window = window
        self.topics: dict[str, dict[str, dict[str, tuple[str, dict]]]] = {}  # topic -> key -> ref -> (node, meta)
        self.pending: dict[str, Diff] = {}
        self._left: OrderedDict[str, None] = OrderedDict()  # phx_refs whose leave clients were told of

    REMEMBERED_LEAVES = 100_000

    def track(self, topic: str, node: str, key: str, meta: dict, quiet: bool = False) -> None:
        ref = meta.get("phx_ref")
        if not isinstance(ref, str):
            return
        self.topics.setdefault(topic, {}).setdefault(key, {})[ref] = (node, meta)
        diff = self._diff(topic)
        if quiet and diff.leaves.get(key, {}).pop(ref, None) is not None:
            quiet = True  # its node was dropped and came back within the window: clients never knew
        elif quiet and ref in self._left:
            del self._left[ref]
            quiet = False  # clients were told it left (its node was taken for dead): it joins again
        if quiet:
            diff.quiet.setdefault(key, {})[ref] = meta
        else:
            diff.joins.setdefault(key, {})[ref] = meta

    def untrack(self, topic: str, key: str, ref: str) -> None:
        by_ref = self.topics.get(topic, {}).get(key)
        if not by_ref or ref not in by_ref:
            return
        _, meta = by_ref.pop(ref)
        self._forget_empty(topic, key)
        diff = self._diff(topic)
        if diff.joins.get(key, {}).pop(ref, None) is None:  # joined and left within one window: never told
            diff.quiet.get(key, {}).pop(ref, None)
            diff.leaves.setdefault(key, {})[ref] = meta

    def drop(self, topic: str, node: str) -> int:
        """Node no longer holds topic (it left, restarted or died): its metas leave."""
        gone = [
            (key, ref)
            for key, by_ref in self.topics.get(topic, {}).items()
            for ref, held in by_ref.items()
            if held[0] == node
        ]
        for key, ref in gone:
            self.untrack(topic, key, ref)
        return len(gone)

    def forget_topic(self, topic: str) -> None:
        """Another server owns topic now: drop it, and what was still to announce, without a diff."""
        self.topics.pop(topic, None)
        self.pending.pop(topic, None)

    def state(self, topic: str) -> dict:
        """``{key: {"metas": [...]}}`` now, for a node that needs the whole list."""
        return {
            key: {"metas": [meta for _, meta in by_ref.values()]} for key, by_ref in self.topics.get(topic, {}).items()
        }

    def counts(self, topic: str) -> tuple[int, int]:
        """(metas, keys): clients and users."""
        keys = self.topics.get(topic, {})
        return sum(len(by_ref) for by_ref in keys.values()), len(keys)

    def due(self, now: float | None = None) -> list[tuple[str, Diff]]:
        """Take the diffs whose window has passed."""
        now = time.monotonic() if now is None else now
        ready = [(topic, self.pending.pop(topic)) for topic, diff in list(self.pending.items()) if diff.due <= now]
        for _, diff in ready:
            for by_ref in diff.leaves.values():
                self._left.update(dict.fromkeys(by_ref))
        while len(self._left) > self.REMEMBERED_LEAVES:
            self._left.popitem(last=False)
        return ready

    def next_due(self) -> float | None:
        return min((diff.due for diff in self.pending.values()), default=None)

    def _diff(self, topic: str) -> Diff:
        diff = self.pending.get(topic)
        if diff is None:
            diff = self.pending[topic] = Diff(time.monotonic() + self.window)
        return diff

    def _forget_empty(self, topic: str, key: str) -> None:
        keys = self.topics[topic]
        if not keys[key]:
            del keys[key]
        if not keys:
            del self.topics[topic]
