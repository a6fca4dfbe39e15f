"""A plain Channels chat app that knows nothing of DPS but its layer: ``daphne tests.chat_app:application``.

It is the kind of consumer the Channels tutorial writes (group_add on connect,
group_send on receive, a handler named after the message type), used to check
that TopicRingLayer is a drop-in layer.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dps_site.settings")
get_asgi_application()

from channels.generic.websocket import AsyncJsonWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.room = "chat." + self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive_json(self, content):
        if "to" in content:  # a direct message to one channel, possibly on another node
            await self.channel_layer.send(content["to"], {"type": "chat.message", "text": content["text"]})
        elif content.get("whoami"):
            await self.send_json({"me": self.channel_name})
        else:
            await self.channel_layer.group_send(self.room, {"type": "chat.message", "text": content["text"]})

    async def chat_message(self, event):
        await self.send_json({"text": event["text"]})


application = ProtocolTypeRouter({"websocket": URLRouter([path("chat/<str:room>", ChatConsumer.as_asgi())])})
