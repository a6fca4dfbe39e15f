"""DPS: Phoenix Channels over Django Channels, with topics owned on a consistent hash ring."""

__all__ = ["publish", "apublish"]


def publish(topic: str, event: str, payload: dict) -> None:
    """Broadcast to every subscriber of topic, on every node, from sync code (see pubsub/publishing.py)."""
    from pubsub.publishing import publish as _publish

    _publish(topic, event, payload)


async def apublish(topic: str, event: str, payload: dict) -> None:
    """Broadcast to every subscriber of topic, on every node, from async code (see pubsub/publishing.py)."""
    from pubsub.publishing import apublish as _apublish

    await _apublish(topic, event, payload)
