"""Signed socket tokens: who a websocket belongs to, for clients that are not a logged-in page.

A token is Django's signing of ``{"sub": identity, **claims}`` with this module's
salt and the site's ``SECRET_KEY``, timestamped, so ``verify`` refuses a token that
was tampered with, signed with another key, or is older than ``max_age`` seconds.
Another service with the same ``SECRET_KEY`` (or ``manage.py dpstoken``) can mint them.
"""

from __future__ import annotations

from django.core import signing

from pubsub.exceptions import InvalidToken

__all__ = ["sign", "verify", "warn_if_development_key", "DEFAULT_MAX_AGE", "DEVELOPMENT_KEY_WARNING"]

SALT = "dps.socket-token"
DEVELOPMENT_KEY_WARNING = (
    "SECRET_KEY is the development key from the source: anyone can forge socket tokens and sessions. "
    "Set DPS_SECRET_KEY (the same on every process) before serving real users."
)
DEFAULT_MAX_AGE = 86400


def sign(identity: str, **claims) -> str:
    """A token for identity (a user id, a name), with any JSON-serialisable claims."""
    if not isinstance(identity, str) or not identity:
        raise ValueError(f"identity must be a non-empty string, not {identity!r}")
    return signing.dumps({**claims, "sub": identity}, salt=SALT, compress=True)


def verify(token: str, max_age: float = DEFAULT_MAX_AGE) -> tuple[str, dict]:
    """(identity, claims) of a valid token; InvalidToken ("expired" or "invalid") otherwise."""
    if not isinstance(token, str) or not token:
        raise InvalidToken("invalid")
    try:
        data = signing.loads(token, salt=SALT, max_age=max_age)
    except signing.SignatureExpired:
        raise InvalidToken("expired") from None
    except signing.BadSignature:
        raise InvalidToken("invalid") from None
    if not isinstance(data, dict) or not isinstance(data.get("sub"), str):
        raise InvalidToken("invalid")
    claims = dict(data)
    return claims.pop("sub"), claims


def warn_if_development_key(logger) -> None:
    """Say it loudly at start while the development key is in use (see DEVELOPMENT_KEY_WARNING)."""
    from pubsub.conf import setting

    if setting("DPS_USING_DEVELOPMENT_KEY"):
        logger.warning(DEVELOPMENT_KEY_WARNING)
