"""ASGI entry point: ``daphne dps_site.asgi:application``.

HTTP goes to Django; websockets on ``/socket/websocket`` speak Phoenix V2.
"""

import asyncio
import logging
import os
import sys

from django.core.asgi import get_asgi_application
from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dps_site.settings")
try:
    django_application = get_asgi_application()  # sets Django up before the consumers import models
except ImproperlyConfigured as exc:  # a wrong DPS_* setting: one clear line, not daphne's traceback
    sys.exit(f"DPS configuration error: {exc}")

from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from pubsub.authorization import load_authorizer  # noqa: E402
from pubsub.consumers import PhoenixSocket, RejectingSocket  # noqa: E402
from pubsub.origins import BrowserOriginValidator  # noqa: E402
from pubsub.socket_auth import SessionUser, SocketAuth  # noqa: E402
from pubsub.tokens import warn_if_development_key  # noqa: E402


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
            logging.getLogger("pubsub").exception(
                "node %s could not start; retrying at the first websocket", layer.node
            )

    reactor.callWhenRunning(lambda: asyncio.ensure_future(start()))


# Fail at start, naming the setting, rather than at the first websocket.
try:
    layer = get_channel_layer()
    layer.check()
    socket_auth = SocketAuth(settings.DPS_SOCKET_AUTH, max_age=settings.DPS_TOKEN_MAX_AGE)
except ImproperlyConfigured as exc:
    sys.exit(f"DPS configuration error: {exc}")
# This process is a websocket node: on SIGTERM it drains (closes sockets so clients go elsewhere).
layer.drain_on_sigterm = True
warn_if_development_key(logging.getLogger("pubsub"))
_start_node_when_daphne_runs(layer)

phoenix_socket = PhoenixSocket.as_asgi(
    max_frame_bytes=settings.DPS_MAX_FRAME_BYTES,
    max_channels=settings.DPS_MAX_CHANNELS,
    idle_timeout=settings.DPS_IDLE_TIMEOUT,
    join_authorizer=load_authorizer(settings.DPS_JOIN_AUTHORIZER),
    max_connections=settings.DPS_MAX_CONNECTIONS,
    publish_rate=settings.DPS_PUBLISH_RATE,
    publish_burst=settings.DPS_PUBLISH_BURST,
    max_send_buffer=settings.DPS_MAX_SEND_BUFFER,
    socket_auth=socket_auth,
)

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": BrowserOriginValidator(
            SessionUser(
                URLRouter(
                    [
                        path("socket/websocket", phoenix_socket),
                        re_path(r"", RejectingSocket.as_asgi()),
                    ]
                )
            ),
            settings.DPS_ALLOWED_ORIGINS,
            on_refused=lambda: layer.stats.update(connections_refused_origin=1),
        ),
    }
)
