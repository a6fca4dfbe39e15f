"""Who is connecting: the socket's identity (``Refused`` for an auth hook).

The public import path; the code lives in pubsub/socket/auth.py."""

from pubsub.socket.auth import BEARER_PREFIX, Identity, Refused, SessionUser, SocketAuth, token_of

__all__ = ["Identity", "Refused", "SocketAuth", "SessionUser", "token_of", "BEARER_PREFIX"]
