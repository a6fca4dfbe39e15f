"""Orders for every node, sent through the ring like any group message: ``disconnect(identity)``.

Every node joins the control group at start with a channel of its own, so one
publish reaches every node once (the owner fans it out per node, as always).
A node acts on ``dps.disconnect`` by closing its local sockets of that identity
with 4001, after which phoenix.js reconnects, and so authenticates again.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from pubsub.core.messages import CONTROL_GROUP

__all__ = ["NodeControl", "adisconnect", "disconnect", "CONTROL_GROUP"]

logger = logging.getLogger("pubsub.layer")

DISCONNECT = "dps.disconnect"


class NodeControl:
    """A mixin of TopicRingLayer: the node's control channel and its sockets by identity."""

    async def _join_control(self) -> None:
        """Called while the node starts (group_add would wait for the start to finish)."""
        channel = f"dps.{self.node}!control"
        self._fastlanes[channel] = self._on_control
        self._groups[CONTROL_GROUP] = {channel}
        await self._announce("sub", CONTROL_GROUP)

    def register_identity(self, channel: str, identity: str) -> None:
        """Channel's socket belongs to identity (discard_channel forgets it)."""
        self._identities.setdefault(identity, set()).add(channel)
        self._identity_of[channel] = identity

    def _forget_identity(self, channel: str) -> None:
        identity = self._identity_of.pop(channel, None)
        if identity is not None:
            channels = self._identities.get(identity)
            channels.discard(channel)
            if not channels:
                del self._identities[identity]

    def _on_control(self, message: dict) -> bool:
        if message.get("type") == DISCONNECT:
            channels = list(self._identities.get(message.get("identity"), ()))
            for channel in channels:
                close = self._closers.get(channel)
                if close is not None:
                    close()
            if channels:
                logger.info("node %s: disconnected %d sockets of %s", self.node, len(channels), message["identity"])
        return True


async def adisconnect(identity: str, layer=None) -> None:
    """Close every socket of identity, on every node, with 4001 (clients reconnect)."""
    if not isinstance(identity, str) or not identity:
        raise ValueError(f"identity must be a non-empty string, not {identity!r}")
    await (layer or get_channel_layer()).group_send(CONTROL_GROUP, {"type": DISCONNECT, "identity": identity})


def disconnect(identity: str) -> None:
    """adisconnect for sync code."""
    async_to_sync(adisconnect)(identity)
