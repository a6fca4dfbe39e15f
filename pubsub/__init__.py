"""DPS: Phoenix Channels over Django Channels, with topics owned on a consistent hash ring."""

__all__ = ["publish", "apublish", "disconnect", "adisconnect"]


def publish(topic: str, event: str, payload: dict) -> None:
    """Broadcast to every subscriber of topic, on every node, from sync code (see pubsub/http/publishing.py)."""
    from pubsub.http.publishing import publish as _publish

    _publish(topic, event, payload)


async def apublish(topic: str, event: str, payload: dict) -> None:
    """Broadcast to every subscriber of topic, on every node, from async code (see pubsub/http/publishing.py)."""
    from pubsub.http.publishing import apublish as _apublish

    await _apublish(topic, event, payload)


def disconnect(identity: str) -> None:
    """Close every socket of identity on every node with 4001, from sync code (see pubsub/node/control.py)."""
    from pubsub.node.control import disconnect as _disconnect

    _disconnect(identity)


async def adisconnect(identity: str) -> None:
    """Close every socket of identity on every node with 4001, from async code."""
    from pubsub.node.control import adisconnect as _adisconnect

    await _adisconnect(identity)
