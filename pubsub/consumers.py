"""The Phoenix Channels V2 websocket consumer: protocol state per socket.

Frames are handled one at a time in arrival order (Channels' dispatch loop
awaits each handler), as the protocol requires: concurrent handling would
reorder publishes and race a phx_leave against the next phx_join.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import AsyncConsumer, get_handler_name
from channels.exceptions import StopConsumer

from pubsub import protocol
from pubsub.authorization import allow_all, authorize
from pubsub.backpressure import CLOSE_POLICY_VIOLATION, SlowReaderGuard, fail_with_close_frame
from pubsub.channel_routes import ChannelRoutes
from pubsub.channels import Channel, Reply, Stop
from pubsub.exceptions import ProtocolError, TransportError
from pubsub.fastlane import frame_writer, send_nowait
from pubsub.inbound import arrival, stamp_arrivals
from pubsub.publishing import BROADCAST_TYPE, broadcast  # broadcast stays importable from here
from pubsub.recovery import after_for, decide, frame_with_ref, recover_param
from pubsub.socket_auth import Identity, Refused, SocketAuth
from pubsub.throttle import TokenBucket

try:  # daphne's websocket protocol raises this for a send on a connection that just closed
    from autobahn.exception import Disconnected
except ImportError:  # pragma: no cover - another ASGI server

    class Disconnected(Exception):
        pass


__all__ = ["PhoenixSocket", "RejectingSocket", "broadcast", "BROADCAST_TYPE"]

logger = logging.getLogger(__name__)

SUPPORTED_VSN = "2.0.0"

# Close codes. daphne (autobahn) lets an application send only 1000 or 3000-4999, so
# DPS uses 4000 + the RFC 6455 code it means. phoenix.js reconnects after any of
# them; 1000 would stop clients up to phoenix v1.8.12 from reconnecting.
CLOSE_GOING_AWAY = 4001
CLOSE_UNSUPPORTED_DATA = 4003
CLOSE_INVALID_PAYLOAD = 4007
CLOSE_TOO_SLOW = CLOSE_POLICY_VIOLATION  # 4008: the client stopped reading (pubsub/backpressure.py)
CLOSE_TOO_BIG = 4009
RFC_MESSAGE_TOO_BIG = 1009  # daphne's own limit (--websocket_max_message_size, 1 MiB by default)

# One guard per process meters every socket's unsent bytes (pubsub/backpressure.py).
_slow_reader_guards: dict[int, SlowReaderGuard] = {}


def slow_reader_guard(max_send_buffer: int) -> SlowReaderGuard:
    guard = _slow_reader_guards.get(max_send_buffer)
    if guard is None:
        guard = _slow_reader_guards[max_send_buffer] = SlowReaderGuard(max_send_buffer)
    return guard


class PhoenixSocket(AsyncConsumer):
    """One websocket speaking Phoenix Channels V2 JSON; each joined topic is a layer group
    and a Channel instance (pubsub/channels.py) of the class its route names."""

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

    async def _end_all(self, channels: list[Channel]) -> None:
        try:
            for channel in channels:
                await self._end(channel, "closed")
        except Exception as exc:
            logger.warning("leaving %d topics of an ended socket failed: %s", len(channels), exc)

    # Channel layer events

    async def phx_broadcast(self, message: dict) -> None:
        """A broadcast for a topic this socket may have joined; the frame is pre-encoded."""
        join = self.joins.get(message["topic"])
        if join is not None:  # the topic may have been left while the message was queued
            text = self._frame_for(join, message)
            if text is not None:
                await self.send_text(text)

    def _fastlane(self, message: dict) -> bool:
        """The layer's direct path for broadcasts: one string concatenation and a write, no task."""
        if message.get("type") != BROADCAST_TYPE:
            return False
        join = self.joins.get(message["topic"])
        if join is None or self.closed:
            return True
        watch = self._write_watch
        if watch is not None and self._guard.check_now(watch):
            return True  # cut off as too slow: the client reconnects (and, with history, recovers)
        text = self._frame_for(join, message)
        if text is None:
            return True
        try:
            if self._write_frame(text) and watch is not None:
                self._guard.note(watch)
        except Disconnected:
            self.closed = True
        return True

    def _frame_for(self, join: Channel, message: dict) -> str | None:
        """The frame of a broadcast for one join: its join_ref, and for a recovering join the ref
        "<epoch>:<seq>". None: held (its missed messages are being replayed), already sent, or past
        a gap (a recovering client must never see seq N+2 without N+1: its next rejoin would
        claim N+2 and lose N+1)."""
        if message.get("presence") and not join.presence_synced:
            return None  # presence_diff only to joins that got a presence_state (not the seed's sockets)
        if not join.recovering:
            if message.get("except") == self.channel_name:  # broadcast_from skips its sender
                return None
            return protocol.frame_from_tail(join.encoded_ref, message["tail"])
        if join.held is not None:
            join.held.append(message)
            return None
        seq = message.get("seq")
        if not seq:  # not numbered (a presence change)
            return protocol.frame_from_tail(join.encoded_ref, message["tail"])
        if seq <= join.last_seq or join.lost:
            return None
        if join.seq_known and seq != join.last_seq + 1:
            self._lose(join)
            return None
        join.last_seq, join.seq_known = seq, True
        if message.get("except") == self.channel_name:
            return None  # (counted as seen: the sender's own broadcast_from)
        return frame_with_ref(join.encoded_ref, message["epoch"], seq, message["tail"])

    def _on_lost_messages(self, topic: str) -> None:
        """The node lost messages of topic its history could not give back: a recovering join errors,
        so phoenix.js rejoins with its last position and recovers (or learns it cannot)."""
        join = self.joins.get(topic)
        if join is not None and join.recovering:
            self._lose(join)

    def _lose(self, join: Channel) -> None:
        """Nothing more for this join (now: no await before it stops sending), then phx_error."""
        if not join.lost:
            join.lost = True
            asyncio.ensure_future(self._close_channel(join, "phx_error", "gap"))

    def _watch_writes(self) -> None:
        """Meter this socket's unsent bytes (daphne only); too slow a reader is closed with 4008."""
        if self.max_send_buffer <= 0:
            return
        self._guard = slow_reader_guard(self.max_send_buffer)
        self._write_watch = self._guard.watch(self.base_send, self._cut_off)

    def _cut_off(self, unsent: int) -> None:
        self.closed = True
        self.count("slow_readers_cut")
        logger.warning(
            "closed websocket %s with %d: %d bytes unsent over the %d-byte limit (DPS_MAX_SEND_BUFFER)",
            self.scope.get("client"),
            CLOSE_TOO_SLOW,
            unsent,
            self.max_send_buffer,
        )

    def _close_for_drain(self) -> None:
        """The node is stopping: close with a code after which clients reconnect (to another node)."""
        send_nowait(self.base_send, {"type": "websocket.close", "code": CLOSE_GOING_AWAY})

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

    async def join(self, frame: protocol.Frame) -> None:
        topic = frame.topic
        channel_class = None
        if topic != protocol.PHOENIX_TOPIC and protocol.valid_topic(topic):
            channel_class = self.channel_routes.match(topic)
        if channel_class is None:
            await self._reply(None, frame.ref, topic, "error", {"reason": "unmatched topic"})
            return
        try:
            position = recover_param(frame.payload)
        except ValueError as exc:  # before anything changes: a malformed rejoin keeps the join it had
            await self._reply(frame.join_ref, frame.ref, topic, "error", {"reason": str(exc)})
            return
        previous = self.joins.pop(topic, None)
        if previous is not None:
            # Duplicate join: the old channel closes, the new join replaces it (never two subscriptions).
            await self._push(previous.join_ref, previous.join_ref, topic, "phx_close")
            await self._terminate(previous, "rejoin")
        elif len(self.joins) >= self.max_channels:
            await self._reply(frame.join_ref, frame.ref, topic, "error", {"reason": "too many channels joined"})
            return
        channel = channel_class(self, topic, frame.join_ref)
        reply = await self._ask_join(channel, frame.payload)
        if reply.status != "ok":
            if previous is not None:
                await self.channel_layer.group_discard(topic, self.channel_name)
            await self._reply(frame.join_ref, frame.ref, topic, reply.status, reply.response)
            return
        # Subscribe before replying: a broadcast sent after the client saw "ok" must reach it.
        await self.channel_layer.group_add(topic, self.channel_name)
        self.joins[topic] = channel
        self.count("joins")
        if position is None:
            await self._reply(frame.join_ref, frame.ref, topic, "ok", reply.response)
        elif not await self._join_recovering(channel, frame, reply, position):
            return
        try:
            await self._join_presence(channel, frame.payload)
            await _called(channel.after_join)
        except TransportError:
            raise
        except Exception:
            await self._crash(channel, "after_join")

    async def _join_recovering(self, channel: Channel, frame: protocol.Frame, reply: Reply, position) -> bool:
        """Reply ok with {epoch, seq, recovered}; then the missed messages, then the live ones held
        meanwhile (subscribed before the history was read, so none falls between the two)."""
        channel.recovering, channel.held = True, []
        answer = {"epoch": "", "seq": 0, "messages": []}
        if hasattr(self.channel_layer, "history_after"):
            try:
                answer = await self.channel_layer.history_after(channel.topic, after_for(position))
                # Known from here, 0 included: a topic's first messages lost on their way are a gap
                # (before, a join at 0 took whatever came first, and 3 were lost unnoticed in a test).
                channel.seq_known = True
            except TransportError as exc:  # no owner answering: start over rather than refuse
                logger.warning("no history of %s for a recovering join: %s", channel.topic, exc)
        if self.joins.get(channel.topic) is not channel:
            return False  # left, closed or errored meanwhile
        recovered, missed = decide(position, answer, self.recovery_limit)
        self.count("recoveries" if recovered else "recoveries_refused" if position is not True else "recover_starts")
        response = {**(reply.response or {}), "epoch": answer["epoch"], "seq": answer["seq"], "recovered": recovered}
        await self._reply(frame.join_ref, frame.ref, channel.topic, "ok", response)
        # Not recovered: the client reloads up to "seq"; recovered: it has everything up to its position.
        channel.last_seq = position.seq if recovered else answer["seq"]
        for seq, message in missed:
            if "tail" in message and message.get("except") != self.channel_name:
                await self.send_text(frame_with_ref(channel.encoded_ref, answer["epoch"], seq, message["tail"]))
            channel.last_seq = seq
        while channel.held:  # what arrived while replaying; _frame_for drops what was replayed
            held, channel.held = channel.held, None
            texts = [text for text in map(lambda message: self._frame_for(channel, message), held) if text]
            channel.held = []  # (no await above: nothing arrived while it was None)
            for text in texts:
                await self.send_text(text)
        channel.held = None
        return True

    async def _join_presence(self, channel: Channel, params: Any) -> None:
        """Track an identified join, then push the topic's presence_state (to identified sockets,
        and to anonymous ones that ask with ``"presence": true``: the seed's example sees none)."""
        layer = self.channel_layer
        if not hasattr(layer, "presence_state"):
            return
        identified = self.identity.name is not None
        if identified and channel.track_presence:
            await channel.track(channel.presence_meta())
        if identified or (isinstance(params, dict) and params.get("presence") is True):
            channel.presence_synced = True  # diffs from now on (phoenix.js buffers them until the state)
            state = await layer.presence_state_json(channel.topic)
            if self.joins.get(channel.topic) is channel:
                head = protocol.encode_json([channel.join_ref, None, channel.topic, "presence_state"])
                await self.send_text(head[:-1] + "," + state + "]")

    async def _ask_join(self, channel: Channel, params: Any) -> Reply:
        """The join authorizer, then the class's join: the reply to send."""
        try:
            refusal = await authorize(self.join_authorizer, self.scope, channel.topic, params)
        except Exception:
            logger.exception("join authorizer failed for %s", channel.topic)
            return Reply.error("join crashed")
        if refusal is not None:
            return Reply("error", refusal)
        try:
            answer = await _called(channel.join, params)
        except Exception:
            logger.exception("%s.join failed for %s", type(channel).__name__, channel.topic)
            return Reply.error("join crashed")
        if answer is None or isinstance(answer, dict):
            return Reply.ok(answer)
        if isinstance(answer, Reply):
            return answer
        logger.error("%s.join returned %r; expected None, a dict or a Reply", type(channel).__name__, answer)
        return Reply.error("join crashed")

    async def handle_event(self, channel: Channel, frame: protocol.Frame) -> None:
        """A client event on a joined topic: the channel's handle_in decides the answer."""
        try:
            answer = await _called(channel.handle_in, frame.event, frame.payload)
        except (TransportError, OSError) as exc:  # Redis is away: the client may retry, the channel lives
            logger.warning("%s on %s failed: %s", frame.event, frame.topic, exc)
            await self._reply(frame.join_ref, frame.ref, frame.topic, "error", {"reason": "unavailable"})
            return
        except Exception:
            await self._crash(channel, "handle_in")
            return
        if isinstance(answer, Reply):
            await self._reply(frame.join_ref, frame.ref, frame.topic, answer.status, answer.response)
        elif isinstance(answer, Stop):
            if answer.reply is not None:
                await self._reply(frame.join_ref, frame.ref, frame.topic, answer.reply.status, answer.reply.response)
            await self._close_channel(channel, "phx_close", "stop")
        elif answer is not None:
            logger.error("%s.handle_in returned %r; expected a Reply, a Stop or None", type(channel).__name__, answer)
            await self._close_channel(channel, "phx_error", "crash")

    async def leave(self, frame: protocol.Frame) -> None:
        channel = self.joins.get(frame.topic)
        if channel is None:
            await self._reply(frame.join_ref, frame.ref, frame.topic, "ok")
            return
        if frame.join_ref is not None and frame.join_ref != channel.join_ref:
            return  # a stale leave of an earlier join
        del self.joins[frame.topic]
        await self._end(channel, "leave")
        await self._reply(channel.join_ref, frame.ref, frame.topic, "ok")
        await self._push(channel.join_ref, channel.join_ref, frame.topic, "phx_close")

    async def _crash(self, channel: Channel, where: str) -> None:
        logger.exception("%s.%s failed on %s", type(channel).__name__, where, channel.topic)
        self.count("channel_crashes")
        await self._close_channel(channel, "phx_error", "crash")

    async def _close_channel(self, channel: Channel, event: str, reason: str) -> None:
        """End a channel from the server side: phx_close (stopped) or phx_error (crashed, phoenix.js rejoins)."""
        if self.joins.get(channel.topic) is channel:
            del self.joins[channel.topic]
        await self._push(channel.join_ref, channel.join_ref, channel.topic, event)
        await self._end(channel, reason)

    async def _end(self, channel: Channel, reason: str) -> None:
        """Unsubscribe a channel that is no longer in self.joins, then let it clean up."""
        if hasattr(self.channel_layer, "untrack_presence"):
            await self.channel_layer.untrack_presence(self.channel_name, channel.topic)
        await self.channel_layer.group_discard(channel.topic, self.channel_name)
        await self._terminate(channel, reason)

    @staticmethod
    async def _terminate(channel: Channel, reason: str) -> None:
        try:
            await _called(channel.terminate, reason)
        except Exception:
            logger.exception("%s.terminate(%r) failed on %s", type(channel).__name__, reason, channel.topic)

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

    def count(self, what: str) -> None:
        """Socket counters go to the layer's stats, the node's one set of numbers (if it keeps one)."""
        stats = getattr(self.channel_layer, "stats", None)
        if stats is not None:
            stats[what] += 1

    def _open_connections(self) -> int:
        stats = getattr(self.channel_layer, "stats", None)
        return stats["connections_opened"] - stats["connections_closed"] if stats is not None else 0

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


async def _called(handler, *args):
    """Call a channel hook, plain or async."""
    result = handler(*args)
    return await result if inspect.isawaitable(result) else result


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
