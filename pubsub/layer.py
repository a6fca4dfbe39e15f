"""TopicRingLayer: a Channels layer that routes every group through its owner on a hash ring.

group_send(topic) is one append to the owner's inbox; the owner sequences the
message and appends it once per websocket node holding members; this node's
reader hands that one decoded message to every local member's mailbox. Redis
work per publish is O(nodes), never O(subscribers).

Channel names carry their node (``dps.ws-a!3f9c…``), so send() to a channel of
another node is one append to that node's stream. Delivered messages are shared
between the local receivers of one group_send: treat them as read-only.

This module is the Channels contract and the node's membership state; the machinery it
drives lives in pubsub/node/, one concept a module: ``sending`` (to owners and other nodes),
``lifecycle`` (event loops, transport, background tasks), ``delivery`` (reading the node's
stream), ``history`` (gap fill), ``presence`` (the replica), ``ring_following`` (owners and ring
generations), ``liveness`` (heartbeat and snapshot), ``draining`` and ``control``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable

from channels.layers import BaseChannelLayer

from pubsub.core import entries
from pubsub.core.heartbeat import HeartbeatThread
from pubsub.core.protocol import valid_topic
from pubsub.core.ring import HashRing
from pubsub.core.tasks import stop_tasks
from pubsub.exceptions import ChannelFull, ConfigurationError, TransportError
from pubsub.node.control import NodeControl
from pubsub.node.delivery import NodeDelivery
from pubsub.node.draining import Draining
from pubsub.node.history import NodeHistory
from pubsub.node.lifecycle import Lifecycle
from pubsub.node.liveness import NodeLiveness
from pubsub.node.mailbox import Mailbox
from pubsub.node.presence import NodePresence
from pubsub.node.ring_following import RingFollowing
from pubsub.node.sending import Sending
from pubsub.transport.base import Transport, node_stream

__all__ = ["TopicRingLayer", "NODE_NAME_PATTERN"]

logger = logging.getLogger(__name__)

NODE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class TopicRingLayer(
    Sending,
    Lifecycle,
    NodeDelivery,
    NodePresence,
    NodeHistory,
    RingFollowing,
    NodeLiveness,
    Draining,
    NodeControl,
    BaseChannelLayer,
):
    """A drop-in Channels layer (extensions: groups, flush) backed by topic servers on a hash ring.

    With no transport (no ``redis_url``) it runs embedded: an in-memory transport
    and one in-process topic server per ring member, the same code as a cluster.
    """

    extensions = ["groups", "flush"]

    def __init__(
        self,
        node: str = "ws-1",
        topic_servers: Iterable[str] = ("ts-1",),
        redis_url: str | None = None,
        transport: Transport | None = None,
        capacity: int = 1000,
        expiry: int = 60,
        channel_capacity: dict | None = None,
        stream_maxlen: int = 100_000,
        redis_wait_replicas: int = 0,
        redis_wait_timeout: float = 1.0,
        liveness_ttl: float = 5.0,
        presence_window: float = 0.1,
        history_size: int = 100,
        history_ttl: float = 300.0,
        live_ring: bool = True,
        drain_on_sigterm: bool = False,
    ):
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity)
        if not NODE_NAME_PATTERN.match(node or ""):
            raise ConfigurationError(
                f"DPS_NODE={node!r} is not a valid node name: use 1-64 letters, digits, '-' or '_'."
            )
        self.node = node
        self.ring = HashRing(topic_servers)
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.stream_maxlen = stream_maxlen
        self.redis_wait = (redis_wait_replicas, redis_wait_timeout)  # (replicas, seconds): see the Redis transport
        self.liveness_ttl = liveness_ttl
        self.presence_window = presence_window  # what topic servers coalesce presence changes over
        self.history_size, self.history_ttl = history_size, history_ttl  # what topic servers keep per topic
        self.drain_on_sigterm = drain_on_sigterm
        self.ring_poll = min(1.0, liveness_ttl / 4)
        self.static_ring = self.ring
        self.redis_url = redis_url
        self._given_transport = transport
        self.embedded = transport is None and redis_url is None
        # Live: the ring is whichever topic servers are running (failover); static: topic_servers, fixed.
        # The embedded topic servers live in this process, so their ring is always static.
        self.live_ring = live_ring and not self.embedded
        self.configured_live_ring = live_ring  # what runtopicserver follows (its ring is never embedded)
        self.stats: Counter[str] = Counter()
        # Publish origins: unique per process, so an owner can drop a publish a retry appended twice.
        self._origin_prefix = f"{node}/{secrets.token_hex(6)}/"
        self._published = 0
        self._reset()

    def _reset(self) -> None:
        self.transport: Transport | None = None
        self.started_at: float | None = None
        self.generation = 0
        self.epoch = ""
        self.ring = self.static_ring
        self.stream_lag = 0.0
        self.draining = False
        self._mailboxes: dict[str, Mailbox] = {}
        self._fastlanes: dict[str, Callable[[dict], bool]] = {}
        self._closers: dict[str, Callable[[], None]] = {}
        self._identities: dict[str, set[str]] = {}  # identity -> its local channels
        self._identity_of: dict[str, str] = {}
        self._groups: dict[str, set[str]] = {}
        self._last_seq: dict[str, int] = {}
        self._first_tips: dict[str, int] = {}  # a topic's number when this node first subscribed (node/history.py)
        self._owner_generations: dict[str, int] = {}  # topic -> newest generation that numbered it
        self._announcements: dict[str, asyncio.Future] = {}
        self._tasks: list[asyncio.Task] = []
        self._started: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_drop_log = 0.0
        self._heartbeat: HeartbeatThread | None = None
        self._publisher: tuple | None = None  # (loop, transport, ring read at, ring) for appends from elsewhere
        self._node_cursor: str | None = None  # the last node-stream entry handled (None: not started yet)
        self._replicas: dict[str, dict[str, dict[str, dict]]] = {}  # topic -> key -> phx_ref -> meta
        self._replica_ready: dict[str, asyncio.Event] = {}
        self._state_json: dict[str, str] = {}  # topic -> its replica as JSON, until the replica changes
        self._gap_handlers: dict[str, Callable[[str], None]] = {}
        self._tracked: dict[str, dict[str, tuple[str, dict]]] = {}  # channel -> topic -> (key, meta)
        self.topic_servers: list = []

    # Channel layer API

    async def send(self, channel: str, message: dict) -> None:
        """Queue message for channel, on this node or, by one stream entry, on its own node."""
        self._check_message(message)
        self.require_valid_channel_name(channel)
        node = self.node_of(channel)
        if node is not None and node != self.node:
            entry = entries.pack("send", channel, entries.pack_message(message))
            await self._append_from_anywhere(node_stream(node), entry)
            return
        await self._ensure_started()
        if not self._mailbox(channel).put(message):
            self.stats["dropped"] += 1
            raise ChannelFull(channel)

    async def receive(self, channel: str) -> dict:
        """The next message for a channel of this node."""
        mailbox = self._mailboxes.get(channel)
        if mailbox is None or not self._running_here():  # the hot path skips what is already known
            self.require_valid_channel_name(channel)
            await self._ensure_started()
            mailbox = self._mailbox(channel)
        mailbox.idle_since = None
        return await mailbox.get()

    async def new_channel(self, prefix: str = "dps.") -> str:
        """A new channel name of this node: ``{prefix}.{node}!{random}`` (one dot between, as the
        stock layers put it: the node is read back from the name)."""
        await self._ensure_started()
        channel = f"{prefix.rstrip('.')}.{self.node}!{secrets.token_hex(8)}"
        self._mailbox(channel)
        return channel

    # Groups extension

    async def group_add(self, group: str, channel: str) -> None:
        """Add channel to group; returns once the group's owner will route the group's next message here.

        The owner learns of the node (not of the channel) when the node's first
        local member joins; that append is ordered before any publish made after
        this call returns, so a member never misses a message sent after its join.
        A channel of another node is added by that node, shortly after this returns.
        """
        if await self._group_change_elsewhere("gadd", group, channel):
            return
        members = self._groups.get(group)
        if members is None:
            members = self._groups[group] = {channel}
            announcing = self._announce("sub", group)
        else:
            members.add(channel)
            announcing = self._announcements.get(group)  # the first member's "sub" may still be on its way
        if announcing is None:
            return
        try:
            await asyncio.shield(announcing)
        except TransportError:
            # The owner never heard of this node's members: a failed join leaves no trace, so the
            # next member's join announces the group again rather than trusting a dead "sub".
            if self._groups.get(group) is members:
                del self._groups[group]
            raise

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove channel from group; the owner forgets this node when its last member leaves."""
        if not await self._group_change_elsewhere("gdiscard", group, channel):
            await self._leave_local(group, channel)

    async def group_send(self, group: str, message: dict) -> None:
        """One append to the group's owner, which sequences it and fans it out once per node."""
        self._published += 1
        await self._publish(group, message, f"{self._origin_prefix}{self._published}")

    async def group_send_once(self, group: str, message: dict, key: str) -> None:
        """group_send, but the group's owner delivers a message with this key once within five
        minutes (an HTTP client retrying a publish); a later repeat is accepted and dropped."""
        if not isinstance(key, str) or not key:
            raise TypeError("An idempotency key must be a non-empty string.")
        await self._publish(group, message, f"key:{group}:{key}")

    # Flush extension

    async def flush(self) -> None:
        """Stop background tasks and forget every channel, group and queued message of this node."""
        await self.close()

    async def close(self) -> None:
        """Cancel and await the background tasks, then release the transport."""
        if self._loop is not None and self._loop is not asyncio.get_running_loop() and not self._loop.is_running():
            self._leave_dead_loop()  # its tasks and connections are gone already
        await self._stop_heartbeat()
        await stop_tasks(self._tasks)
        publisher, self._publisher = self._publisher, None
        if publisher is not None and publisher[0] is asyncio.get_running_loop() and self._given_transport is None:
            await publisher[1].close()
        if self.transport is not None and self._given_transport is None:
            await self.transport.close()
        self._reset()

    # Extensions of DPS

    def _embedded_topic_servers(self) -> list:
        """Embedded (no Redis): one in-process topic server per ring member, the same code as a cluster's."""
        from topicserver.server import TopicServer

        return [
            TopicServer(
                name,
                self.transport,
                members=self.ring.members,
                liveness_ttl=self.liveness_ttl,
                presence_window=self.presence_window,
                history_size=self.history_size,
                history_ttl=self.history_ttl,
            )
            for name in self.ring.members
        ]

    async def start(self) -> None:
        """Start the background tasks now rather than on first use (idempotent)."""
        await self._ensure_started()

    def require_valid_group_name(self, name: str) -> bool:
        """Groups are topics, so the names Phoenix clients use (``topics:matrix``) are valid."""
        if not isinstance(name, str) or not valid_topic(name):
            raise TypeError("Group name must be 1-255 printable characters without whitespace.")
        return True

    def node_of(self, channel: str) -> str | None:
        """The node a specific channel lives on, or None for a non-specific (process-local) channel."""
        bang = channel.find("!")
        if bang < 0:
            return None
        return channel[:bang].rsplit(".", 1)[-1]

    def check(self) -> None:
        """Fail at process start, naming the setting, if Redis is configured but unreachable."""
        if self.redis_url is None:
            return
        from pubsub.transport.redis_clients import connection_problem

        problem = connection_problem(self.redis_url)
        if problem:
            raise ConfigurationError(
                f"DPS_REDIS_URL={self.redis_url!r}: {problem}, or unset DPS_REDIS_URL for the embedded "
                "single-process mode."
            )

    def discard_channel(self, channel: str) -> None:
        """Forget a closed channel's mailbox, fastlane and closer now (its groups must have been left already)."""
        self._mailboxes.pop(channel, None)
        self._fastlanes.pop(channel, None)
        self._closers.pop(channel, None)
        self._gap_handlers.pop(channel, None)
        self._forget_identity(channel)
        self.untrack_channel(channel)

    def local_members(self, group: str) -> int:
        return len(self._groups.get(group, ()))

    # Internals

    def _check_message(self, message: dict) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise TypeError("A channel layer message must be a dict with a string 'type'.")

    def _mailbox(self, channel: str) -> Mailbox:
        mailbox = self._mailboxes.get(channel)
        if mailbox is None:
            mailbox = self._mailboxes[channel] = Mailbox(self.get_capacity(channel))
        return mailbox
