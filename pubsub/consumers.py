"""The Phoenix Channels V2 websocket consumer: protocol state per socket.

Frames are handled one at a time in arrival order (Channels' dispatch loop
awaits each handler), which PROTOCOL.md §5 requires: concurrent handling would
reorder publishes and race a phx_leave against the next phx_join.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from channels.consumer import AsyncConsumer, get_handler_name
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer

from pubsub import protocol
from pubsub.authorization import allow_all, authorize
from pubsub.exceptions import ProtocolError, TransportError
from pubsub.fastlane import send_nowait

__all__ = ["PhoenixSocket", "RejectingSocket", "broadcast", "BROADCAST_TYPE"]

logger = logging.getLogger(__name__)

BROADCAST_TYPE = "phx.broadcast"
SUPPORTED_VSN = "2.0.0"

# Close codes. daphne (autobahn) lets an application send only 1000 or 3000-4999, so
# DPS uses 4000 + the RFC 6455 code it means. phoenix.js reconnects after any of
# them; 1000 would stop clients up to phoenix v1.8.12 from reconnecting (PROTOCOL.md §7).
CLOSE_GOING_AWAY = 4001
CLOSE_UNSUPPORTED_DATA = 4003
CLOSE_INVALID_PAYLOAD = 4007
CLOSE_TOO_BIG = 4009


class Join(NamedTuple):
    """One joined topic of a socket: the join_ref as sent and as JSON (prefixed to broadcasts)."""

    ref: str | None
    encoded_ref: str


async def broadcast(topic: str, event: str, payload: dict, layer=None) -> None:
    """Send ``[_, null, topic, event, payload]`` to every subscriber of topic, from any server code.

    The frame is encoded here, once; receivers only prefix their join_ref.
    """
    layer = layer or get_channel_layer()
    tail = protocol.encode_broadcast_tail(topic, event, payload)
    await layer.group_send(topic, {"type": BROADCAST_TYPE, "topic": topic, "tail": tail})


class PhoenixSocket(AsyncConsumer):
    """One websocket speaking Phoenix Channels V2 JSON; topics map 1:1 to layer groups."""

    def __init__(
        self,
        max_frame_bytes: int = 65536,
        max_channels: int = 100,
        idle_timeout: float = 60.0,
        join_authorizer=allow_all,
    ):
        self.max_frame_bytes = max_frame_bytes
        self.max_channels = max_channels
        self.idle_timeout = idle_timeout
        self.join_authorizer = join_authorizer
        self.joins: dict[str, Join] = {}
        self.accepted = False
        self.last_seen = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task | None = None

    async def dispatch(self, message: dict) -> None:
        # Channels' dispatch also runs close_old_connections() in a thread for every
        # message; this consumer does no database work per frame, so skip it.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # Websocket events

    async def websocket_connect(self, message: dict) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        vsn = query.get("vsn", ["1.0.0"])[-1]
        if vsn != SUPPORTED_VSN:
            logger.info("refused websocket with vsn=%r (only %s is served)", vsn, SUPPORTED_VSN)
            await self.send({"type": "websocket.close"})  # before accept: HTTP 403
            return
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if "phoenix" in self.scope.get("subprotocols", ()):
            accept["subprotocol"] = "phoenix"  # the client's authToken option asks for it
        await self.send(accept)
        self.accepted = True
        self._count("connections_opened")
        if hasattr(self.channel_layer, "register_fastlane"):
            self.channel_layer.register_fastlane(self.channel_name, self._fastlane)
            self.channel_layer.register_closer(self.channel_name, self._close_for_drain)
        self._touch()
        self._arm_idle_timer()

    async def websocket_receive(self, message: dict) -> None:
        self._touch()
        text = message.get("text")
        if text is None:
            await self._close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")
            return
        if len(text) > self.max_frame_bytes // 4 and len(text.encode()) > self.max_frame_bytes:
            await self._close(CLOSE_TOO_BIG, f"frame over {self.max_frame_bytes} bytes")
            return
        try:
            frame = protocol.parse(text)
        except ProtocolError as exc:
            if exc.replyable:
                await self._reply(exc.join_ref, exc.ref, exc.topic, "error", {"reason": exc.reason})
            else:
                await self._close(CLOSE_INVALID_PAYLOAD, exc.reason)
            return
        try:
            await self.handle_frame(frame)
        except (TransportError, OSError) as exc:
            logger.warning("frame on %s failed: %s", frame.topic, exc)
            await self._reply(frame.join_ref, frame.ref, frame.topic, "error", {"reason": "unavailable"})

    async def websocket_disconnect(self, message: dict) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.accepted:
            self._count("connections_closed")
        topics, self.joins = list(self.joins), {}
        try:
            for topic in topics:
                await self.channel_layer.group_discard(topic, self.channel_name)
        except TransportError as exc:  # the owners drop this node's membership when it stops renewing it
            logger.warning("leaving %d topics on disconnect failed: %s", len(topics), exc)
        finally:
            discard = getattr(self.channel_layer, "discard_channel", None)
            if discard is not None:
                discard(self.channel_name)
        raise StopConsumer()

    # Channel layer events

    async def phx_broadcast(self, message: dict) -> None:
        """A broadcast for a topic this socket may have joined; the frame is pre-encoded."""
        join = self.joins.get(message["topic"])
        if join is not None:  # may have been left while the message was queued
            await self.send(
                {"type": "websocket.send", "text": protocol.frame_from_tail(join.encoded_ref, message["tail"])}
            )

    def _fastlane(self, message: dict) -> bool:
        """The layer's direct path for broadcasts: one string concatenation and a write, no task."""
        if message.get("type") != BROADCAST_TYPE:
            return False
        join = self.joins.get(message["topic"])
        if join is not None:
            text = protocol.frame_from_tail(join.encoded_ref, message["tail"])
            send_nowait(self.base_send, {"type": "websocket.send", "text": text})
        return True

    def _close_for_drain(self) -> None:
        """The node is stopping: close with a code after which clients reconnect (to another node)."""
        send_nowait(self.base_send, {"type": "websocket.close", "code": CLOSE_GOING_AWAY})

    # Protocol handling

    async def handle_frame(self, frame: protocol.Frame) -> None:
        if frame.event == "heartbeat" and frame.topic == protocol.PHOENIX_TOPIC:
            await self._reply(frame.join_ref, frame.ref, frame.topic, "ok")
        elif frame.event == "phx_join":
            await self.join(frame)
        elif frame.event == "phx_leave":
            await self.leave(frame)
        else:
            join = self.joins.get(frame.topic)
            if join is None:
                await self._reply(None, frame.ref, frame.topic, "error", {"reason": "unmatched topic"})
            elif frame.join_ref is not None and frame.join_ref != join.ref:
                logger.debug("ignored %s on %s with stale join_ref %s", frame.event, frame.topic, frame.join_ref)
            elif frame.event == "publish":
                await self.publish(frame)
            else:
                await self._reply(
                    frame.join_ref, frame.ref, frame.topic, "error", {"reason": f"unknown event {frame.event!r}"}
                )

    async def join(self, frame: protocol.Frame) -> None:
        topic = frame.topic
        if topic == protocol.PHOENIX_TOPIC or not protocol.valid_topic(topic):
            await self._reply(None, frame.ref, topic, "error", {"reason": "unmatched topic"})
            return
        previous = self.joins.pop(topic, None)
        if previous is not None:
            # Duplicate join: the old channel closes, the new join replaces it (never two subscriptions).
            await self._push(previous.ref, previous.ref, topic, "phx_close")
        elif len(self.joins) >= self.max_channels:
            await self._reply(frame.join_ref, frame.ref, topic, "error", {"reason": "too many channels joined"})
            return
        try:
            refusal = await authorize(self.join_authorizer, self.scope, topic, frame.payload)
        except Exception:
            logger.exception("join authorizer failed for %s", topic)
            refusal = {"reason": "join crashed"}
        if refusal is not None:
            if previous is not None:
                await self.channel_layer.group_discard(topic, self.channel_name)
            await self._reply(frame.join_ref, frame.ref, topic, "error", refusal)
            return
        # Subscribe before replying: a broadcast sent after the client saw "ok" must reach it.
        await self.channel_layer.group_add(topic, self.channel_name)
        self.joins[topic] = Join(frame.join_ref, protocol.encode_json(frame.join_ref))
        self._count("joins")
        await self._reply(frame.join_ref, frame.ref, topic, "ok")

    async def leave(self, frame: protocol.Frame) -> None:
        join = self.joins.get(frame.topic)
        if join is None:
            await self._reply(frame.join_ref, frame.ref, frame.topic, "ok")
            return
        if frame.join_ref is not None and frame.join_ref != join.ref:
            return  # a stale leave of an earlier join
        del self.joins[frame.topic]
        await self.channel_layer.group_discard(frame.topic, self.channel_name)
        await self._reply(join.ref, frame.ref, frame.topic, "ok")
        await self._push(join.ref, join.ref, frame.topic, "phx_close")

    async def publish(self, frame: protocol.Frame) -> None:
        """``publish`` with payload ``[event, object]``: broadcast to every subscriber, sender included."""
        payload = frame.payload
        if not (
            isinstance(payload, list)
            and len(payload) == 2
            and isinstance(payload[0], str)
            and isinstance(payload[1], dict)
        ):
            reason = 'publish payload must be [event, object], e.g. ["event", {"message": "hi"}]'
        elif not payload[0] or payload[0].startswith("phx_"):
            reason = "event must be a non-empty name not starting with phx_"
        else:
            await broadcast(frame.topic, payload[0], payload[1], self.channel_layer)
            self._count("publishes")
            await self._reply(frame.join_ref, frame.ref, frame.topic, "ok")
            return
        await self._reply(frame.join_ref, frame.ref, frame.topic, "error", {"reason": reason})

    # Utility

    async def _reply(self, join_ref: Any, ref: Any, topic: str, status: str, response: dict | None = None) -> None:
        await self.send(
            {"type": "websocket.send", "text": protocol.encode_reply(join_ref, ref, topic, status, response)}
        )

    async def _push(self, join_ref: Any, ref: Any, topic: str, event: str, payload: dict | None = None) -> None:
        await self.send(
            {"type": "websocket.send", "text": protocol.encode_json([join_ref, ref, topic, event, payload or {}])}
        )

    async def _close(self, code: int, why: str) -> None:
        logger.info("closing websocket %s with %d: %s", self.scope.get("client"), code, why)
        await self.send({"type": "websocket.close", "code": code})

    def _count(self, what: str) -> None:
        """Socket counters go to the layer's stats, the node's one set of numbers (if it keeps one)."""
        stats = getattr(self.channel_layer, "stats", None)
        if stats is not None:
            stats[what] += 1

    def _touch(self) -> None:
        self.last_seen = asyncio.get_running_loop().time()

    def _arm_idle_timer(self) -> None:
        if self.idle_timeout > 0:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_at(self.last_seen + self.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per socket, moved only when it fires: cheaper than resetting it per frame.
        if asyncio.get_running_loop().time() < self.last_seen + self.idle_timeout:
            self._arm_idle_timer()
        elif self._closing is None:
            self._closing = asyncio.ensure_future(self._close(CLOSE_GOING_AWAY, f"no data for {self.idle_timeout}s"))


class RejectingSocket(AsyncConsumer):
    """Any other websocket path: refused before the upgrade (HTTP 403)."""

    async def websocket_connect(self, message: dict) -> None:
        await self.send({"type": "websocket.close"})

    async def websocket_disconnect(self, message: dict) -> None:
        raise StopConsumer()
