"""The Phoenix Channels V2 websocket consumer: protocol state per socket.

Frames are handled one at a time in arrival order (Channels' dispatch loop
awaits each handler), as the protocol requires: concurrent handling would
reorder publishes and race a phx_leave against the next phx_join.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import AsyncConsumer, get_handler_name
from channels.exceptions import StopConsumer

from pubsub.core import protocol, protocol_v1
from pubsub.exceptions import ProtocolError, TransportError
from pubsub.socket.auth import Identity, Refused, SocketAuth
from pubsub.socket.authorization import allow_all
from pubsub.socket.backpressure import SlowReaderGuard, fail_with_close_frame
from pubsub.socket.broadcasts import Broadcasts
from pubsub.socket.channel_routes import ChannelRoutes
from pubsub.socket.channels import Channel
from pubsub.socket.close_codes import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    RFC_MESSAGE_TOO_BIG,
)
from pubsub.socket.fastlane import Disconnected, frame_writer
from pubsub.socket.inbound import arrival, stamp_arrivals
from pubsub.socket.joins import Joins
from pubsub.socket.limits import Limits
from pubsub.socket.throttle import TokenBucket

__all__ = ["PhoenixSocket", "RejectingSocket", "serializer_for"]


def serializer_for(vsn: str):
    """The serializer module for a client's vsn, as Phoenix matches "~> 1.0.0" and "~> 2.0.0"; None
    for any other (the socket is refused with HTTP 403)."""
    major_minor, _, patch = vsn.rpartition(".")
    if not patch.isdigit():
        return None
    return {"1.0": protocol_v1, "2.0": protocol}.get(major_minor)


logger = logging.getLogger(__name__)


class PhoenixSocket(Joins, Broadcasts, Limits, AsyncConsumer):
    """One websocket speaking Phoenix Channels V2 JSON; each joined topic is a layer group
    and a Channel instance (pubsub/socket/channels.py) of the class its route names."""

    def __init__(
        self,
        max_frame_bytes: int = 65536,
        max_channels: int = 100,
        idle_timeout: float = 60.0,
        join_authorizer=allow_all,
        max_connections: int = 0,
        publish_rate: float = 0.0,
        publish_burst: int = 200,
        max_send_buffer: int = 0,
        recovery_limit: int = 300,
        socket_auth: SocketAuth | None = None,
        channel_routes: ChannelRoutes | None = None,
    ):
        """0 turns a limit off (max_connections, publish_rate, max_send_buffer); socket_auth None:
        every socket is anonymous; channel_routes None: every topic is a PublishChannel.
        publish_rate limits every client event on a joined topic, not only ``publish``."""
        self.max_frame_bytes = max_frame_bytes
        self.max_channels = max_channels
        self.idle_timeout = idle_timeout
        self.join_authorizer = join_authorizer
        self.max_connections = max_connections
        self.publishes = TokenBucket(publish_rate, publish_burst) if publish_rate > 0 else None
        self.max_send_buffer = max_send_buffer
        self.recovery_limit = recovery_limit
        self.socket_auth = socket_auth
        self.channel_routes = channel_routes or _default_routes()
        self.identity = Identity()
        self.joins: dict[str, Channel] = {}
        self.wire = protocol  # the serializer, chosen by the vsn at connect (protocol_v1 for 1.0.x)
        self.accepted = False
        self.closed = False
        self.last_seen = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task | None = None
        self._write_watch = None
        self._guard: SlowReaderGuard | None = None
        self._write_frame = None

    async def __call__(self, scope, receive, send):
        # Whatever way the consumer ends (a disconnect, a refusal, an error), its channel,
        # memberships and connection count are released: a refused or crashed socket
        # used to leave its layer channel behind for good.
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()

    async def send(self, message: dict) -> None:
        """Send to the client; a client that has just gone is not an error (its disconnect follows)."""
        if self.closed:
            return
        try:
            await super().send(message)
        except Disconnected:
            self.closed = True
            return
        watch = self._write_watch
        if watch is not None and watch.unsent():  # left in Twisted's buffer: the guard's sweeps look at it
            self._guard.note(watch)

    async def send_text(self, text: str) -> None:
        await self.send({"type": "websocket.send", "text": text})

    async def send_frame(self, frame: str | bytes | None) -> None:
        """A text frame, a binary one (bytes), or nothing (None: not for this socket)."""
        if isinstance(frame, bytes):
            await self.send({"type": "websocket.send", "bytes": frame})
        elif frame is not None:
            await self.send_text(frame)

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
        vsn = query.get("vsn", [protocol_v1.VSN])[-1]  # no vsn: 1.0.0, as Phoenix
        wire = serializer_for(vsn)
        if wire is None:
            logger.info("refused websocket with vsn=%r (1.0.x and 2.0.x are served)", vsn)
            await self.send({"type": "websocket.close"})  # before accept: HTTP 403
            return
        self.wire = wire
        if self.max_connections and self._open_connections() >= self.max_connections:
            self.count("connections_refused")
            logger.warning("refused websocket: %d connections open (DPS_MAX_CONNECTIONS)", self.max_connections)
            await self.send({"type": "websocket.close"})
            return
        if self.socket_auth is not None:
            try:
                self.identity = await self.socket_auth.identify(self.scope)
            except Refused as why:
                self.count("connections_refused_auth")
                logger.info("refused websocket %s: %s", self.scope.get("client"), why)
                await self.send({"type": "websocket.close"})
                return
        self.scope["dps.identity"] = self.identity  # for join authorizers and channel code
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if "phoenix" in self.scope.get("subprotocols", ()):
            accept["subprotocol"] = "phoenix"  # the client's authToken option asks for it
        # Before the first frame can come: each is stamped with when it reached the node (the
        # rate limit judges that), and a socket with too much waiting is not read for a while.
        stamp_arrivals(self.base_send, self.max_frame_bytes)
        await self.send(accept)
        self.accepted = True
        self.count("connections_opened")
        fail_with_close_frame(self.base_send)
        self._write_frame = frame_writer(self.base_send)
        self._watch_writes()
        if hasattr(self.channel_layer, "register_fastlane"):
            self.channel_layer.register_fastlane(self.channel_name, self._fastlane)
            self.channel_layer.register_closer(self.channel_name, self._close_for_drain)
            self.channel_layer.register_gap_handler(self.channel_name, self._on_lost_messages)
            if self.identity.name is not None:  # pubsub.disconnect(identity) closes it, on any node
                self.channel_layer.register_identity(self.channel_name, self.identity.name)
        self._touch()
        self._arm_idle_timer()

    async def websocket_receive(self, message: dict) -> None:
        self._touch()
        text = message.get("text")
        try:
            if text is not None:
                if len(text) > self.max_frame_bytes // 4 and len(text.encode()) > self.max_frame_bytes:
                    await self._close(CLOSE_TOO_BIG, f"frame over {self.max_frame_bytes} bytes")
                    return
                frame = self.wire.parse(text)
            else:
                data = message.get("bytes") or b""
                if self.wire is not protocol:
                    await self._close(CLOSE_UNSUPPORTED_DATA, "binary frames need the V2 serializer (vsn=2.0.0)")
                    return
                if len(data) > self.max_frame_bytes:
                    await self._close(CLOSE_TOO_BIG, f"frame over {self.max_frame_bytes} bytes")
                    return
                frame = protocol.parse_binary(data)
        except ProtocolError as exc:
            if exc.replyable:
                await self._reply(exc.join_ref, exc.ref, exc.topic, "error", {"reason": exc.reason})
            else:
                await self._close(CLOSE_INVALID_PAYLOAD, exc.reason)
            return
        try:
            await self.handle_frame(frame, *arrival(message))
        except (TransportError, OSError) as exc:
            logger.warning("frame on %s failed: %s", frame.topic, exc)
            await self._reply(frame.join_ref, frame.ref, frame.topic, "error", {"reason": "unavailable"})

    async def websocket_disconnect(self, message: dict) -> None:
        self.closed = True
        if message.get("code") == RFC_MESSAGE_TOO_BIG:
            logger.info("websocket %s closed with 1009: a frame over daphne's message limit", self.scope.get("client"))
        channels, self.joins = list(self.joins.values()), {}
        try:
            for channel in channels:
                await self._end(channel, "closed")
        except TransportError as exc:  # the owners drop this node's membership when it stops renewing it
            logger.warning("leaving %d topics on disconnect failed: %s", len(channels), exc)
        raise StopConsumer()

    def _release(self) -> None:
        """Free what this socket held on the node, once, however the consumer ended."""
        self.closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.accepted:
            self.accepted = False
            self.count("connections_closed")
        if self._write_watch is not None:
            self._guard.forget(self._write_watch)
            self._write_watch = None
        layer = getattr(self, "channel_layer", None)
        if layer is None:
            return
        if self.joins:  # ended without a disconnect (an error): leave the topics in the background
            channels, self.joins = list(self.joins.values()), {}
            asyncio.ensure_future(self._end_all(channels))
        discard = getattr(layer, "discard_channel", None)
        channel_name = getattr(self, "channel_name", None)  # none if the layer could not start
        if discard is not None and channel_name is not None:
            discard(channel_name)

    # Channel layer events

    # Protocol handling

    async def handle_frame(
        self, frame: protocol.Frame, arrived: float | None = None, since: float | None = None
    ) -> None:
        """Answer one frame; arrived (and since, the earliest it may have come) is when it reached
        the node, by which the rate limit judges it (default: now)."""
        if frame.event == "heartbeat" and frame.topic == protocol.PHOENIX_TOPIC:
            await self._reply(frame.join_ref, frame.ref, frame.topic, "ok")
        elif frame.event == "phx_join":
            await self.join(frame)
        elif frame.event == "phx_leave":
            await self.leave(frame)
        else:
            channel = self.joins.get(frame.topic)
            if channel is None:
                await self._reply(None, frame.ref, frame.topic, "error", {"reason": "unmatched topic"})
            elif frame.join_ref is not None and frame.join_ref != channel.join_ref:
                logger.debug("ignored %s on %s with stale join_ref %s", frame.event, frame.topic, frame.join_ref)
            elif self.publishes is not None and not self.publishes.take(arrived, since):
                self.count("publishes_rate_limited")
                await self._reply(frame.join_ref, frame.ref, frame.topic, "error", {"reason": "rate limited"})
            else:
                await self.handle_event(channel, frame)

    # Utility

    async def _reply(
        self, join_ref: Any, ref: Any, topic: str, status: str, response: dict | bytes | None = None
    ) -> None:
        if isinstance(response, bytes):  # a binary reply (V2 only: V1 has no binary form)
            if self.wire is protocol:
                await self.send_frame(protocol.encode_binary_reply(join_ref, ref, topic, status, response))
            else:
                await self._reply(join_ref, ref, topic, "error", {"reason": "a binary reply needs vsn=2.0.0"})
            return
        await self.send(
            {"type": "websocket.send", "text": self.wire.encode_reply(join_ref, ref, topic, status, response)}
        )

    async def _push(self, join_ref: Any, ref: Any, topic: str, event: str, payload: dict | None = None) -> None:
        await self.send(
            {"type": "websocket.send", "text": self.wire.encode_frame(join_ref, ref, topic, event, payload)}
        )

    async def _close(self, code: int, why: str) -> None:
        logger.info("closing websocket %s with %d: %s", self.scope.get("client"), code, why)
        await self.send({"type": "websocket.close", "code": code})

    def count(self, what: str) -> None:
        """Socket counters go to the layer's stats, the node's one set of numbers (if it keeps one)."""
        stats = getattr(self.channel_layer, "stats", None)
        if stats is not None:
            stats[what] += 1


def _default_routes() -> ChannelRoutes:
    global _DEFAULT_ROUTES
    if _DEFAULT_ROUTES is None:
        _DEFAULT_ROUTES = ChannelRoutes()
    return _DEFAULT_ROUTES


_DEFAULT_ROUTES: ChannelRoutes | None = None


class RejectingSocket(AsyncConsumer):
    """Any other websocket path: refused before the upgrade (HTTP 403)."""

    channel_layer_alias = None  # no layer channel for a socket that is refused anyway

    async def websocket_connect(self, message: dict) -> None:
        await self.send({"type": "websocket.close"})

    async def websocket_disconnect(self, message: dict) -> None:
        raise StopConsumer()
