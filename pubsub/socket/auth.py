"""Who is connecting: the socket's identity, decided before the websocket upgrade.

``DPS_SOCKET_AUTH`` picks the policy:
- ``optional`` (the default): a socket without a token is anonymous; a token that is present
  but invalid or expired is refused;
- ``required``: only a socket with a valid token is accepted;
- a dotted path to a hook ``hook(scope, params)``, plain or async, answering the identity (a
  string), a dict ``{"identity": ..., **assigns}``, or a refusal: False (or raise ``Refused(reason)``).
The token comes from the ``token`` query parameter (phoenix.js ``new Socket(url, {params:
{token}})``) or from a ``base64url.bearer.phx.<token>`` subprotocol (phoenix.js ``authToken``).
Without a token, a logged-in Django session (a page of the same site) identifies the socket as
its user's primary key. A refused socket gets HTTP 403 before the upgrade.
"""

from __future__ import annotations

import base64
import binascii
import inspect
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from django.utils.module_loading import import_string

from pubsub.exceptions import ConfigurationError, InvalidToken
from pubsub.socket import tokens

__all__ = ["Identity", "Refused", "SocketAuth", "SessionUser", "token_of", "BEARER_PREFIX"]

BEARER_PREFIX = "base64url.bearer.phx."


@dataclass(frozen=True)
class Identity:
    """Who a socket belongs to (None: anonymous), and what the policy attached to it."""

    name: str | None = None
    assigns: dict = field(default_factory=dict)


class Refused(Exception):
    """The socket may not connect; str(exc) is the reason that is logged."""


def query_params(scope: dict) -> dict[str, str]:
    """The connect params (query string), last value of each."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return {key: values[-1] for key, values in query.items()}


def token_of(scope: dict) -> str | None:
    """The token a client sent: ``token`` query parameter, else a bearer subprotocol."""
    token = query_params(scope).get("token")
    if token:
        return token
    for protocol in scope.get("subprotocols", ()):
        if protocol.startswith(BEARER_PREFIX):
            encoded = protocol[len(BEARER_PREFIX) :]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise Refused("the bearer subprotocol is not base64url") from None
    return None


class SocketAuth:
    """One policy (the DPS_SOCKET_AUTH setting), applied to each connecting socket."""

    def __init__(self, policy: str = "optional", max_age: float = tokens.DEFAULT_MAX_AGE):
        self.policy = policy
        self.max_age = max_age
        self.hook = None
        if policy not in ("optional", "required"):
            try:
                self.hook = import_string(policy)
            except ImportError as exc:
                raise ConfigurationError(
                    f"DPS_SOCKET_AUTH={policy!r}: use 'optional', 'required' or the dotted path of a hook ({exc})"
                ) from None

    async def identify(self, scope: dict) -> Identity:
        """The socket's identity, or Refused."""
        if self.hook is not None:
            return await self._ask_hook(scope)
        token = token_of(scope)
        if token is None:
            user = scope.get("user")
            if user is not None and user.is_authenticated:
                return Identity(str(user.pk), {"username": user.get_username()})
            if self.policy == "required":
                raise Refused("no token and no logged-in session (DPS_SOCKET_AUTH=required)")
            return Identity()
        try:
            name, claims = tokens.verify(token, max_age=self.max_age)
        except InvalidToken as exc:
            raise Refused(f"{exc} token") from None
        return Identity(name, claims)

    async def _ask_hook(self, scope: dict) -> Identity:
        answer = self.hook(scope, query_params(scope))  # may raise Refused(reason) itself
        if inspect.isawaitable(answer):
            answer = await answer
        if answer is False or answer is None:
            raise Refused("refused by DPS_SOCKET_AUTH hook")
        if isinstance(answer, str) and answer:
            return Identity(answer)
        if isinstance(answer, dict) and isinstance(answer.get("identity"), str | None):
            assigns = {k: v for k, v in answer.items() if k != "identity"}
            return Identity(answer.get("identity"), assigns)
        raise TypeError(f"DPS_SOCKET_AUTH hook returned {answer!r}; expected an identity, a dict or False")


class SessionUser:
    """ASGI middleware: ``scope["user"]`` from the Django session, for sockets that carry a session
    cookie. Channels' AuthMiddlewareStack does the work; sockets without the cookie skip its
    database lookup in a thread, so a connect storm of token or anonymous clients stays cheap."""

    def __init__(self, inner):
        from channels.auth import AuthMiddlewareStack
        from django.conf import settings

        self.inner = inner
        self.with_session = AuthMiddlewareStack(inner)
        self.cookie = settings.SESSION_COOKIE_NAME.encode() + b"="

    async def __call__(self, scope, receive, send):
        for name, value in scope.get("headers", ()):
            if name == b"cookie" and self.cookie in value:
                return await self.with_session(scope, receive, send)
        return await self.inner(scope, receive, send)
