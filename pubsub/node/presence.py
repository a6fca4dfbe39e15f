"""A node's side of presence: what its sockets track, and a replica of each topic's presence.

The topic's owner holds the truth (topicserver/presence.py). A node sends it tracks and
untracks in order with its memberships, receives the whole presence when it subscribes
(``pstate``) and every change after that as a message in order with the topic's messages (not
numbered: history keeps messages only), keeps a replica per topic it
holds, answers a joining socket's ``presence_state`` from it, and turns each change into one
``presence_diff`` frame, encoded once for all its sockets in the topic.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time

from pubsub.core import entries, protocol
from pubsub.core.messages import broadcast_message
from pubsub.exceptions import TransportError
from pubsub.transport.base import inbox_stream

__all__ = ["NodePresence", "new_ref"]

logger = logging.getLogger("pubsub.layer")

STATE_TIMEOUT = 5.0  # seconds a joining socket waits for its topic's presence from the owner


def new_ref() -> str:
    """A unique phx_ref: 12 random bytes, base64url (Phoenix's are 12 bytes too)."""
    return base64.urlsafe_b64encode(os.urandom(12)).decode()


class NodePresence:
    """Mixed into TopicRingLayer; its state lives in _reset (``_replicas``, ``_replica_ready``, ``_tracked``)."""

    async def track_presence(self, channel: str, topic: str, key: str, meta: dict | None = None) -> dict:
        """Track channel in topic under key (channel must be a member); a second call is an update:
        one diff with the new meta (new phx_ref, phx_ref_prev) joining and the old one leaving."""
        tracked = self._tracked.setdefault(channel, {})
        previous = tracked.get(topic)
        full = {**(meta or {}), "online_at": int(time.time()), "phx_ref": new_ref()}
        if previous is not None:
            full["online_at"] = previous[1]["online_at"]
            full["phx_ref_prev"] = previous[1]["phx_ref"]
        tracked[topic] = (key, full)
        items = [entries.pack("track", topic, self.node, key, full, False)]
        if previous is not None:
            items.insert(0, entries.pack("untrack", topic, self.node, previous[0], previous[1]["phx_ref"]))
        await self._send_presence(topic, items)
        return full

    async def untrack_presence(self, channel: str, topic: str) -> None:
        tracked = self._tracked.get(channel, {}).pop(topic, None)
        if tracked is not None and topic in self._groups:
            key, meta = tracked
            await self._send_presence(topic, [entries.pack("untrack", topic, self.node, key, meta["phx_ref"])])

    async def _send_presence(self, topic: str, items: list[bytes]) -> None:
        """To topic's owner, behind the node's "sub" of it if that is still on its way. Tracks are not
        chained behind one another, so 10,000 sockets joining at once share round trips."""
        pending = self._announcements.get(topic)
        if pending is not None:
            try:
                await asyncio.shield(pending)
            except TransportError:
                pass  # the join that announced it was told; the owner ignores a track it has no sub for
        owner = inbox_stream(self.ring.owner(topic))
        await self.transport.append_many([(owner, data) for data in items])

    def untrack_channel(self, channel: str) -> None:
        """Forget a closed channel's tracks (its groups are left, or being left, which drops them at the owner)."""
        self._tracked.pop(channel, None)

    async def presence_state(self, topic: str, timeout: float = STATE_TIMEOUT) -> dict:
        """``{key: {"metas": [...]}}`` of topic (this node must hold a member of it)."""
        await self._replica_of(topic, timeout)
        return self._presence_of_replica(topic)

    async def presence_state_json(self, topic: str, timeout: float = STATE_TIMEOUT) -> str:
        """presence_state as JSON, encoded once per change of the replica: 10,000 sockets joining a
        big room between two changes share one encoding instead of making 10,000."""
        await self._replica_of(topic, timeout)
        encoded = self._state_json.get(topic)
        if encoded is None:
            encoded = self._state_json[topic] = protocol.encode_json(self._presence_of_replica(topic))
        return encoded

    async def _replica_of(self, topic: str, timeout: float) -> None:
        ready = self._replica_ready.get(topic)
        if ready is None:
            ready = self._replica_ready[topic] = asyncio.Event()
        if not ready.is_set():
            try:
                await asyncio.wait_for(ready.wait(), timeout)
            except TimeoutError:
                logger.warning("node %s: no presence of %s from its owner within %.0fs", self.node, topic, timeout)

    def local_presence(self, topic: str) -> dict | None:
        """The replica of topic, if this node runs on this loop and holds a complete one; else None."""
        ready = self._replica_ready.get(topic)
        if not self._running_here() or ready is None or not ready.is_set() or topic not in self._groups:
            return None
        return self._presence_of_replica(topic)

    def _presence_of_replica(self, topic: str) -> dict:
        replica = self._replicas.get(topic, {})
        return {key: {"metas": list(by_ref.values())} for key, by_ref in replica.items()}

    def presence_entries(self, groups) -> list[tuple[str, bytes]]:
        """Quiet re-announcements of every tracked meta in groups (their owner changed, or forgot them)."""
        wanted = set(groups)
        return [
            (topic, entries.pack("track", topic, self.node, key, meta, True))
            for tracked in self._tracked.values()
            for topic, (key, meta) in tracked.items()
            if topic in wanted and topic in self._groups
        ]

    # From the owner

    def _on_presence_state(self, topic: str, state: dict) -> None:
        if topic not in self._groups:
            return
        self._state_json.pop(topic, None)
        self._replicas[topic] = {
            key: {
                meta["phx_ref"]: meta for meta in value.get("metas", ()) if isinstance(meta, dict) and "phx_ref" in meta
            }
            for key, value in state.items()
        }
        ready = self._replica_ready.get(topic)
        if ready is None:
            ready = self._replica_ready[topic] = asyncio.Event()
        ready.set()

    def _on_presence_change(self, topic: str, change: dict) -> dict | None:
        """Apply a change to the replica; the frame for local sockets, or None for a quiet one."""
        replica = self._replicas.setdefault(topic, {})
        self._state_json.pop(topic, None)
        for key, value in change.get("leaves", {}).items():
            by_ref = replica.get(key)
            if by_ref is not None:
                for meta in value["metas"]:
                    by_ref.pop(meta.get("phx_ref"), None)
                if not by_ref:
                    del replica[key]
        for part in ("joins", "quiet"):
            for key, value in change.get(part, {}).items():
                by_ref = replica.setdefault(key, {})
                for meta in value["metas"]:
                    by_ref[meta["phx_ref"]] = meta
        joins, leaves = change.get("joins", {}), change.get("leaves", {})
        if not joins and not leaves:
            return None
        message = broadcast_message(topic, "presence_diff", {"joins": joins, "leaves": leaves})
        message["presence"] = True  # for sockets that asked for presence only
        return message

    def _forget_replica(self, topic: str) -> None:
        self._replicas.pop(topic, None)
        self._state_json.pop(topic, None)
        self._replica_ready.pop(topic, None)
