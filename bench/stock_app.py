"""The stock stack to compare with: a minimal Channels app on channels_redis, as the tutorial writes it.

``daphne bench.stock_app:application`` with BENCH_STOCK_LAYER=core (RedisChannelLayer) or
pubsub (RedisPubSubChannelLayer) and BENCH_REDIS_URL. It speaks the same frames as DPS for
join and publish, and, like a typical consumer, encodes the frame once per subscriber.
"""

import json
import os

from django.conf import settings

LAYERS = {"core": "channels_redis.core.RedisChannelLayer", "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer"}

if not settings.configured:
    settings.configure(
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": LAYERS[os.environ.get("BENCH_STOCK_LAYER", "core")],
                "CONFIG": {"hosts": [os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")]},
            }
        },
        ALLOWED_HOSTS=["*"],
    )
    import django

    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


def group_of(topic):
    return "t." + "".join(c if c.isalnum() or c in "-_." else "_" for c in topic)


class StockSocket(AsyncWebsocketConsumer):
    async def connect(self):
        self.joins = {}
        await self.accept()

    async def disconnect(self, code):
        for topic in self.joins:
            await self.channel_layer.group_discard(group_of(topic), self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        join_ref, ref, topic, event, payload = json.loads(text_data)[:5]
        if event == "phx_join":
            await self.channel_layer.group_add(group_of(topic), self.channel_name)
            self.joins[topic] = join_ref
        elif event == "publish":
            message = {"type": "topic.message", "topic": topic, "event": payload[0], "payload": payload[1]}
            await self.channel_layer.group_send(group_of(topic), message)
        await self.send(json.dumps([join_ref, ref, topic, "phx_reply", {"status": "ok", "response": {}}]))

    async def topic_message(self, message):
        frame = [self.joins.get(message["topic"]), None, message["topic"], message["event"], message["payload"]]
        await self.send(json.dumps(frame, separators=(",", ":")))


application = ProtocolTypeRouter({"websocket": URLRouter([path("socket/websocket", StockSocket.as_asgi())])})
