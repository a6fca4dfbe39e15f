"""Channel classes: what a joined topic does, Phoenix's channel API in Python.

A socket that joins a topic gets one instance of the class its route names (see
pubsub/socket/channel_routes.py), and keeps it until it leaves, closes, is stopped or crashes.
Handlers may be plain or async functions:

- ``join(params)`` answers the join: None or a dict is an ok reply (the dict is its
  response); ``Reply.error({...})`` refuses it, and the client sees that response.
- ``after_join()`` runs once the ok reply is on the wire (pushes from ``join`` would
  arrive before it).
- ``handle_in(event, payload)`` answers a client event: ``Reply.ok/error(...)`` replies
  (echoing the client's ref), None sends nothing, ``Stop(reply)`` replies if a reply is
  given, then closes the channel with ``phx_close`` (phoenix.js does not rejoin).
- ``terminate(reason)`` runs once whenever the channel ends: "leave", "closed", "stop",
  "crash", "rejoin" (a duplicate join replaced it).

An exception in ``handle_in`` sends ``phx_error`` for that topic only (phoenix.js rejoins
after a second) and is logged; the socket and its other topics live on. An exception in
``join`` refuses it with ``{"reason": "join crashed"}``, as Phoenix does.

``broadcast`` and ``broadcast_from`` are encoded once per node like every broadcast;
``push`` goes to this socket only. ``assigns`` is this join's own dict, seeded from what
the socket's auth attached to the connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pubsub.core import protocol
from pubsub.core.messages import binary_broadcast_message, broadcast_message

__all__ = ["Channel", "PublishChannel", "Reply", "Stop"]


@dataclass(frozen=True)
class Reply:
    """A reply to a join or a client event: ``{"status": status, "response": response}``."""

    status: str = "ok"
    response: dict | None = None

    @classmethod
    def ok(cls, response: dict | None = None) -> Reply:
        return cls("ok", response)

    @classmethod
    def error(cls, response: dict | str | None = None) -> Reply:
        """A string is shorthand for ``{"reason": string}``."""
        return cls("error", {"reason": response} if isinstance(response, str) else response)


@dataclass(frozen=True)
class Stop:
    """End the channel after an event: the reply, if any, then ``phx_close``."""

    reply: Reply | None = None


class ChannelSocket(Protocol):
    """What a channel uses of its socket (pubsub/socket/consumer.py's PhoenixSocket is one)."""

    identity: Any  # pubsub/socket/auth.py's Identity: name, assigns
    scope: dict
    channel_name: str
    channel_layer: Any
    wire: Any  # its serializer: pubsub.core.protocol (V2) or protocol_v1

    async def send_text(self, text: str) -> None: ...

    async def send_frame(self, frame: str | bytes | None) -> None: ...

    def count(self, what: str) -> None: ...


class Channel:
    """One topic joined by one socket. Subclass it and name the subclass in DPS_CHANNELS."""

    track_presence = True  # a join by an identified socket is tracked in the topic's presence

    def __init__(self, socket: ChannelSocket, topic: str, join_ref: str | None):
        self.socket = socket
        self.topic = topic
        self.join_ref = join_ref
        self.encoded_ref = protocol.encode_json(join_ref)  # prefixed to every broadcast this join receives
        self.recovering = False  # joined with "recover": broadcasts carry the ref "<epoch>:<seq>"
        self.held: list[dict] | None = None  # live broadcasts held while its missed ones are replayed
        self.last_seq = 0  # the last numbered broadcast sent to this join
        self.seq_known = False  # last_seq is the topic's real position (0 too: a topic with no message yet)
        self.lost = False  # messages were lost for it: it errors, and its client rejoins to recover
        self.presence_synced = False  # got a presence_state, so it gets presence_diff frames
        self.assigns: dict[str, Any] = dict(socket.identity.assigns)

    @property
    def identity(self) -> str | None:
        """Who the socket belongs to (a token's identity, a session's user id), None if anonymous."""
        return self.socket.identity.name

    @property
    def scope(self) -> dict:
        """The websocket's ASGI scope (headers, client address, ``user`` for a session)."""
        return self.socket.scope

    # Hooks to override

    async def join(self, params: Any) -> dict | Reply | None:
        """Accept every join with an empty response."""
        return None

    async def after_join(self) -> None:
        """Called once the join's ok reply has been sent."""

    async def handle_in(self, event: str, payload: Any) -> Reply | Stop | None:
        """Refuse events the class does not know."""
        return Reply.error(f"unknown event {event!r}")

    async def terminate(self, reason: str) -> None:
        """Called once when the channel ends, whatever the reason."""

    def presence_meta(self) -> dict:
        """What this join adds to its presence meta (``phx_ref`` and ``online_at`` are DPS's)."""
        return {}

    # What a channel can do

    async def push(self, event: str, payload: dict | bytes | None = None) -> None:
        """Send ``[join_ref, null, topic, event, payload]`` to this socket only (bytes: a binary push)."""
        if isinstance(payload, bytes):
            await self.socket.send_frame(protocol.encode_binary_push(self.join_ref, self.topic, event, payload))
        else:
            await self.socket.send_text(self.socket.wire.encode_push(self.join_ref, self.topic, event, payload))

    async def broadcast(self, event: str, payload: dict | bytes) -> None:
        """Send event to every subscriber of the topic on every node, this socket included (bytes:
        a binary broadcast, which V1 sockets, having no binary form, do not get)."""
        await self.socket.channel_layer.group_send(self.topic, self._broadcast_message(event, payload))

    async def track(self, meta: dict | None = None, key: str | None = None) -> dict:
        """Be present in the topic as key (default: the identity) with meta; again: an update.
        Only once joined (in after_join or handle_in). Returns the meta as tracked."""
        key = key or self.identity
        if key is None:
            raise ValueError("an anonymous socket has no presence key: pass key=")
        return await self.socket.channel_layer.track_presence(self.socket.channel_name, self.topic, key, meta)

    async def update(self, meta: dict) -> dict:
        """Replace this join's meta: one diff, the new meta joining and the old one leaving."""
        return await self.track(meta)

    async def untrack(self) -> None:
        await self.socket.channel_layer.untrack_presence(self.socket.channel_name, self.topic)

    async def broadcast_from(self, event: str, payload: dict) -> None:
        """Send event to every subscriber of the topic on every node except this socket."""
        message = self._broadcast_message(event, payload)
        message["except"] = self.socket.channel_name
        await self.socket.channel_layer.group_send(self.topic, message)

    def _broadcast_message(self, event: str, payload: dict | bytes) -> dict:
        if isinstance(payload, bytes):
            return binary_broadcast_message(self.topic, event, payload)
        return broadcast_message(self.topic, event, payload)


PUBLISH_FORMAT = 'publish payload must be [event, object], e.g. ["event", {"message": "hi"}]'


class PublishChannel(Channel):
    """The default for every topic: ``publish`` with ``[event, object]`` relays the event to
    every subscriber, sender included, and replies ok (the seed's protocol, byte for byte)."""

    async def handle_in(self, event: str, payload: Any) -> Reply | None:
        if event != "publish":
            return await super().handle_in(event, payload)
        if isinstance(payload, bytes):  # a binary push: relayed as a binary broadcast of "publish"
            await self.broadcast("publish", payload)
            self.socket.count("publishes")
            return Reply.ok()
        if not (
            isinstance(payload, list)
            and len(payload) == 2
            and isinstance(payload[0], str)
            and isinstance(payload[1], dict)
        ):
            return Reply.error(PUBLISH_FORMAT)
        if not payload[0] or payload[0].startswith("phx_"):
            return Reply.error("event must be a non-empty name not starting with phx_")
        await self.broadcast(payload[0], payload[1])
        self.socket.count("publishes")
        return Reply.ok()
