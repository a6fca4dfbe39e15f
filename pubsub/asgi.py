"""The websocket side of an ASGI application: what a project routes to DPS.

``dps_application(get_asgi_application())`` is a whole application (HTTP to Django,
``/socket/websocket`` to DPS); ``websocket_application()`` is only the websocket part, for
a project that builds its own ``ProtocolTypeRouter``. Both read the DPS_* settings
(pubsub/conf.py) and raise ImproperlyConfigured, naming the setting, when one is wrong.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from urllib.parse import urlparse

from channels.layers import get_channel_layer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path, re_path

from pubsub.conf import allowed_origins, setting
from pubsub.socket.auth import SessionUser, SocketAuth
from pubsub.socket.authorization import load_authorizer
from pubsub.socket.channel_routes import ChannelRoutes
from pubsub.socket.consumer import PhoenixSocket, RejectingSocket
from pubsub.socket.longpoll import LongPoll
from pubsub.socket.origins import BrowserOriginValidator
from pubsub.socket.tokens import warn_if_development_key

__all__ = ["dps_application", "websocket_application", "longpoll_application", "phoenix_socket"]

logger = logging.getLogger("pubsub")

SOCKET_PATH = "socket/websocket"
LONGPOLL_PATH = "socket/longpoll"


def dps_application(http_application):
    """HTTP to http_application (Django's) but ``/socket/longpoll``, websockets to DPS; this process
    becomes a node."""
    websocket = websocket_application()
    http = URLRouter([path(LONGPOLL_PATH, longpoll_application()), re_path(r"", http_application)])
    return ProtocolTypeRouter({"http": http, "websocket": websocket})


def longpoll_application():
    """``/socket/longpoll``: Phoenix's LongPoll transport, each session the websocket's consumer
    (pubsub/socket/longpoll.py); the same origin check and session user as a websocket."""
    validator = BrowserOriginValidator(None, allowed_origins())

    def origin_allowed(scope) -> bool:
        origin = next((value for key, value in scope.get("headers", ()) if key == b"origin"), None)
        return validator.valid_origin(urlparse(origin.decode("latin-1")) if origin else None)

    socket_app = phoenix_socket(idle_timeout=0)  # a session lives while it is polled (LongPoll's own expiry)
    return SessionUser(LongPoll(socket_app, max_buffer=setting("DPS_MAX_SEND_BUFFER"), origin_allowed=origin_allowed))


def websocket_application(routes=()):
    """``/socket/websocket`` speaks Phoenix Channels; routes are the project's other websocket
    URL patterns; any other path is refused. Checks origins, then reads the session's user."""
    layer = get_channel_layer()
    if layer is None:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("CHANNEL_LAYERS has no 'default' layer: set it to pubsub.layer.TopicRingLayer")
    if hasattr(layer, "check"):
        layer.check()
        layer.drain_on_sigterm = True  # this process is a websocket node: on SIGTERM it drains
        _start_node_when_daphne_runs(layer)
    warn_if_development_key(logger)
    patterns = [path(SOCKET_PATH, phoenix_socket()), *routes, re_path(r"", RejectingSocket.as_asgi())]

    def count_refusal():
        stats = getattr(layer, "stats", None)
        if stats is not None:
            stats["connections_refused_origin"] += 1

    return BrowserOriginValidator(SessionUser(URLRouter(patterns)), allowed_origins(), on_refused=count_refusal)


def phoenix_socket(**overrides):
    """The Phoenix socket consumer, configured from the DPS_* settings (overrides: for LongPoll)."""
    options = dict(
        max_frame_bytes=setting("DPS_MAX_FRAME_BYTES"),
        max_channels=setting("DPS_MAX_CHANNELS"),
        idle_timeout=setting("DPS_IDLE_TIMEOUT"),
        join_authorizer=load_authorizer(setting("DPS_JOIN_AUTHORIZER")),
        max_connections=setting("DPS_MAX_CONNECTIONS"),
        publish_rate=setting("DPS_PUBLISH_RATE"),
        publish_burst=setting("DPS_PUBLISH_BURST"),
        max_send_buffer=setting("DPS_MAX_SEND_BUFFER"),
        recovery_limit=setting("DPS_RECOVERY_LIMIT"),
        socket_auth=SocketAuth(setting("DPS_SOCKET_AUTH"), max_age=setting("DPS_TOKEN_MAX_AGE")),
        channel_routes=ChannelRoutes(setting("DPS_CHANNELS")),
    )
    return PhoenixSocket.as_asgi(**{**options, **overrides})


def _start_node_when_daphne_runs(layer) -> None:
    """Join the cluster as soon as daphne serves, not at the first websocket (the admin page
    and the owners see the node at once). Only under daphne, whose reactor is already installed."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not hasattr(reactor, "callWhenRunning"):
        return

    async def start():
        try:
            await layer.start()
        except Exception:
            logger.exception("node %s could not start; retrying at the first websocket", layer.node)

    reactor.callWhenRunning(lambda: asyncio.ensure_future(start()))
