"""The join authorization hook (``DPS_JOIN_AUTHORIZER``; ``allow_all`` is the default).

The public import path; the code lives in pubsub/socket/authorization.py."""

from pubsub.socket.authorization import allow_all, authorize, load_authorizer

__all__ = ["allow_all", "load_authorizer", "authorize"]
