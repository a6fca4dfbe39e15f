"""The layer messages DPS itself sends through groups, named in one place for every side: a
broadcast (its frame encoded once), a presence change, and the group every node joins for orders."""

from __future__ import annotations

from pubsub.core import protocol

__all__ = ["BROADCAST_TYPE", "PRESENCE_TYPE", "CONTROL_GROUP", "broadcast_message", "binary_broadcast_message"]

BROADCAST_TYPE = "phx.broadcast"
PRESENCE_TYPE = "dps.presence"  # a topic's presence change, sent by its owner in order with its messages
CONTROL_GROUP = "dps:control"  # every node's own group: orders such as disconnect(identity)


def broadcast_message(topic: str, event: str, payload: dict) -> dict:
    """The layer message of a broadcast: the frame encoded once, less each receiver's join_ref."""
    return {"type": BROADCAST_TYPE, "topic": topic, "tail": protocol.encode_broadcast_tail(topic, event, payload)}


def binary_broadcast_message(topic: str, event: str, data: bytes) -> dict:
    """A binary broadcast: its V2 binary frame, the same bytes for every receiver (V1 has none)."""
    return {"type": BROADCAST_TYPE, "topic": topic, "binary": protocol.encode_binary_broadcast(topic, event, data)}
