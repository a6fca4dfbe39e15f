"""ASGI entry point: ``daphne dps_site.asgi:application``.

HTTP goes to Django; websockets on ``/socket/websocket`` speak Phoenix V2.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dps_site.settings")
django_application = get_asgi_application()  # sets Django up before the consumers import models

from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from pubsub.authorization import load_authorizer  # noqa: E402
from pubsub.consumers import PhoenixSocket, RejectingSocket  # noqa: E402

# Fail at start, naming the setting, rather than at the first websocket.
get_channel_layer().check()
# This process is a websocket node: on SIGTERM it drains (closes sockets so clients go elsewhere).
get_channel_layer().drain_on_sigterm = True

phoenix_socket = PhoenixSocket.as_asgi(
    max_frame_bytes=settings.DPS_MAX_FRAME_BYTES,
    max_channels=settings.DPS_MAX_CHANNELS,
    idle_timeout=settings.DPS_IDLE_TIMEOUT,
    join_authorizer=load_authorizer(settings.DPS_JOIN_AUTHORIZER),
)

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": URLRouter(
            [
                path("socket/websocket", phoenix_socket),
                re_path(r"", RejectingSocket.as_asgi()),
            ]
        ),
    }
)
