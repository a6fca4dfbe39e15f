"""Every error DPS raises on purpose, each one named for what went wrong."""

from typing import Any

from channels.exceptions import ChannelFull
from django.core.exceptions import ImproperlyConfigured

__all__ = ["ChannelFull", "ConfigurationError", "InvalidToken", "ProtocolError", "TransportError"]


class ConfigurationError(ImproperlyConfigured):
    """A DPS setting is missing or wrong; the message names the setting and the fix."""


class InvalidToken(Exception):
    """A socket token that is tampered with, signed with another key, or expired (str(exc) says which)."""


class TransportError(Exception):
    """The byte-moving backend (Redis or in-memory) could not do what was asked."""


class ProtocolError(Exception):
    """A client frame is not a valid Phoenix frame (of the socket's serializer, V2 or V1).

    When the frame still names a topic, the socket answers with an error reply
    (``join_ref``/``ref`` echoed as sent); otherwise it closes the connection.
    """

    def __init__(self, reason: str, *, join_ref: Any = None, ref: Any = None, topic: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.join_ref = join_ref
        self.ref = ref
        self.topic = topic

    @property
    def replyable(self) -> bool:
        """True when the frame carried enough to address an error reply."""
        return self.topic is not None
