"""Signed socket tokens: ``pubsub.tokens.sign(identity)``.

The public import path; the code lives in pubsub/socket/tokens.py."""

from pubsub.socket.tokens import DEFAULT_MAX_AGE, DEVELOPMENT_KEY_WARNING, sign, verify, warn_if_development_key

__all__ = ["sign", "verify", "warn_if_development_key", "DEFAULT_MAX_AGE", "DEVELOPMENT_KEY_WARNING"]
