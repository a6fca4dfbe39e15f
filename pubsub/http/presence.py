"""Who is present in a topic, from server code: ``pubsub.presence.list(topic)``.

The topic's owner holds the answer (topicserver/presence.py); a node that holds members of
the topic answers from its replica, any other process asks the owner.
"""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from pubsub.core import protocol

__all__ = ["alist", "list", "astats", "stats"]


async def alist(topic: str) -> dict:
    """``{key: {"metas": [...]}}``, as a client's ``presence_state``, from async code."""
    if not isinstance(topic, str) or not protocol.valid_topic(topic):
        raise ValueError(f"topic must be 1-255 printable characters without whitespace, not {topic!r}")
    layer = get_channel_layer()
    local = layer.local_presence(topic)
    return local if local is not None else await layer.ask_owner(topic, "plist")


def list(topic: str) -> dict:  # noqa: A001 - the name Phoenix.Presence uses
    """``{key: {"metas": [...]}}``, from sync code (views, commands)."""
    return async_to_sync(alist)(topic)


async def astats(topic: str) -> dict:
    """``{"num_clients": metas, "num_users": keys}`` of topic."""
    return count(await alist(topic))


def stats(topic: str) -> dict:
    return async_to_sync(astats)(topic)


def count(presence: dict) -> dict:
    return {"num_clients": sum(len(value["metas"]) for value in presence.values()), "num_users": len(presence)}
