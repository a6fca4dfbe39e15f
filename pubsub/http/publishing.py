"""Publishing from server code: a view, a signal, a management command, another service's worker.

A publish from the server reaches every subscriber of the topic on every node,
exactly like a client's ``publish``: the frame is encoded here once, the topic's
owner numbers it and sends it once per node. ``publish`` is for sync code (it
runs ``apublish`` through ``async_to_sync``); in a process that is no websocket
node each call is one append on a connection opened for it.
"""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from pubsub.core import protocol
from pubsub.core.messages import BROADCAST_TYPE, broadcast_message

__all__ = ["apublish", "publish", "broadcast", "broadcast_message", "BROADCAST_TYPE"]


async def broadcast(topic: str, event: str, payload: dict, layer=None) -> None:
    """Send ``[_, null, topic, event, payload]`` to every subscriber of topic (no checks: the caller's).

    The frame is encoded here, once; receivers only prefix their join_ref.
    """
    await (layer or get_channel_layer()).group_send(topic, broadcast_message(topic, event, payload))


async def apublish(topic: str, event: str, payload: dict) -> None:
    """Broadcast event with payload to every subscriber of topic, from async code."""
    _check(topic, event, payload)
    await broadcast(topic, event, payload)


def publish(topic: str, event: str, payload: dict) -> None:
    """Broadcast event with payload to every subscriber of topic, from sync code."""
    _check(topic, event, payload)
    async_to_sync(broadcast)(topic, event, payload)


def _check(topic, event, payload) -> None:
    if not isinstance(topic, str) or not protocol.valid_topic(topic):
        raise ValueError(f"topic must be 1-255 printable characters without whitespace, not {topic!r}")
    if not isinstance(event, str) or not event or event.startswith("phx_"):
        raise ValueError(f"event must be a non-empty name not starting with phx_, not {event!r}")
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict (a JSON object), not {type(payload).__name__}")
