"""TopicRingLayer: a Channels layer that routes every group through its owner on a hash ring.

group_send(topic) is one append to the owner's inbox; the owner sequences the
message and appends it once per websocket node holding members; this node's
reader hands that one decoded message to every local member's mailbox. Redis
work per publish is O(nodes), never O(subscribers).

Channel names carry their node (``dps.ws-a!3f9c…``), so send() to a channel of
another node is one append to that node's stream. Delivered messages are shared
between the local receivers of one group_send: treat them as read-only.

This module is the Channels contract and the node's membership state; the rest
of a node's work lives beside it, one concept a module: ``node_delivery``
(reading the node's stream), ``ring_following`` (owners and ring generations),
``node_liveness`` (heartbeat and snapshot) and ``draining``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from channels.layers import BaseChannelLayer

from pubsub import entries
from pubsub.control import CONTROL_GROUP, NodeControl
from pubsub.draining import Draining
from pubsub.exceptions import ChannelFull, ConfigurationError, TransportError
from pubsub.heartbeat import HeartbeatThread
from pubsub.mailbox import Mailbox
from pubsub.node_delivery import NodeDelivery
from pubsub.node_history import NodeHistory
from pubsub.node_liveness import NodeLiveness
from pubsub.node_presence import NodePresence
from pubsub.protocol import valid_topic
from pubsub.ring import HashRing
from pubsub.ring_following import RingFollowing
from pubsub.tasks import raise_if_cancelling, stop_tasks
from pubsub.transport.base import Transport, inbox_stream, node_stream
from pubsub.transport.memory import MemoryTransport

__all__ = ["TopicRingLayer", "NODE_NAME_PATTERN"]

logger = logging.getLogger(__name__)

NODE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class TopicRingLayer(
    NodeDelivery, NodePresence, NodeHistory, RingFollowing, NodeLiveness, Draining, NodeControl, BaseChannelLayer
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

    async def _publish(self, group: str, message: dict, origin: str) -> None:
        self.require_valid_group_name(group)
        self._check_message(message)
        entry = entries.pack("pub", group, entries.pack_message(message), origin)
        await self._append_from_anywhere(None, entry, group)
        self.stats["group_sends"] += 1

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

    async def _group_change_elsewhere(self, op: str, group: str, channel: str) -> bool:
        """Validate; a channel of another node is passed to that node (True), which applies the change."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self._ensure_started()
        node = self.node_of(channel)
        if node is None or node == self.node:
            return False
        await self._append(node_stream(node), entries.pack(op, group, channel))
        return True

    def _check_message(self, message: dict) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise TypeError("A channel layer message must be a dict with a string 'type'.")

    def _mailbox(self, channel: str) -> Mailbox:
        mailbox = self._mailboxes.get(channel)
        if mailbox is None:
            mailbox = self._mailboxes[channel] = Mailbox(self.get_capacity(channel))
        return mailbox

    async def _append(self, stream: str, data: bytes) -> None:
        await self.transport.append(stream, data)

    async def _append_from_anywhere(self, stream: str | None, data: bytes, group: str | None = None) -> None:
        """Append for send() and group_send() from any code: a node's own event loop, or a sync
        view, a management command, a script (``async_to_sync``, ``asyncio.run``).

        Only the node's own loop starts (or uses) the node's background work. Elsewhere (a fresh
        loop, a process that is no websocket node) this is one append on a connection opened for
        it, to the group's owner by the ring in force: no reader or heartbeat is started that
        would outlive the caller's loop, and a node running elsewhere in the process keeps its
        channels and groups. ``stream`` None means the group's owner's inbox.
        """
        home = self._loop
        if home is not None and home.is_running() and home is not asyncio.get_running_loop():
            # The node runs on another thread's loop (sync code's async_to_sync in a thread of
            # its own): append there, through the node, rather than start a second node here.
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self._append_from_anywhere(stream, data, group), home)
            )
            return
        if self.embedded or self._running_here():
            await self._ensure_started()
            await self._append(stream or inbox_stream(self.ring.owner(group)), data)
            return
        transport, ring = await self._publisher_here(need_ring=stream is None)
        await transport.append(stream or inbox_stream(ring.owner(group)), data)

    async def _publisher_here(self, need_ring: bool = True) -> tuple[Transport, HashRing]:
        """This loop's connection for a process (or loop) that is no node, and the ring in force."""
        loop = asyncio.get_running_loop()
        if self._publisher is None or self._publisher[0] is not loop:
            # One connection per event loop, kept while it is used: a process that only publishes
            # (a worker on a long-lived loop) must not pay a connect per message.
            self._publisher = (loop, self._given_transport or self._make_transport(), 0.0, self.static_ring)
        _, transport, ring_read_at, ring = self._publisher
        if need_ring and self.live_ring and time.monotonic() - ring_read_at > self.ring_poll:
            _, members = await transport.ring_state()
            ring = HashRing(members) if members else self.static_ring
            self._publisher = (loop, transport, time.monotonic(), ring)
        return transport, ring

    async def ask_owner(self, topic: str, request: str, *args, timeout: float = 5.0) -> Any:
        """Ask topic's owner (``request`` is an inbox op taking (topic, reply key, *args)); its decoded
        answer. From any code, like group_send: through the node where it runs, else on this loop's connection."""
        home = self._loop
        if home is not None and home.is_running() and home is not asyncio.get_running_loop():
            return await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self.ask_owner(topic, request, *args, timeout=timeout), home)
            )
        if self.embedded or self._running_here():
            await self._ensure_started()
            transport, ring = self.transport, self.ring
        else:
            transport, ring = await self._publisher_here()
        key = f"dps:reply:{self._origin_prefix}{secrets.token_hex(8)}"
        await transport.append(inbox_stream(ring.owner(topic)), entries.pack(request, topic, key, *args))
        answer = await transport.take_reply(key, timeout)
        if answer is None:
            raise TransportError(f"the owner of {topic} did not answer within {timeout:.0f}s")
        return entries.unpack_message(answer)

    def _announce(self, op: str, group: str, data: bytes | None = None) -> asyncio.Future:
        """Send sub/unsub (or data: a presence change) for group to its owner, in the order they
        were decided for that group.

        Returns the announcement's future (its outcome is shared by every member waiting on it)."""
        previous = self._announcements.get(group)
        data = data or entries.pack(op, group, self.node)
        done = asyncio.ensure_future(self._send_announcement(data, group, previous))
        self._announcements[group] = done

        def forget(_):
            if self._announcements.get(group) is done:
                del self._announcements[group]
            if not done.cancelled():
                done.exception()  # retrieved: its waiters may all have been cancelled

        done.add_done_callback(forget)
        return done

    async def _send_announcement(self, data: bytes, group: str, previous: asyncio.Future | None) -> None:
        if previous is not None:
            try:
                await asyncio.shield(previous)
            except TransportError:
                pass  # its own callers were told; this announcement still goes out, in order
        await self._append(inbox_stream(self.ring.owner(group)), data)

    async def _leave_local(self, group: str, channel: str) -> None:
        members = self._groups.get(group)
        if members is None or channel not in members:
            return
        members.discard(channel)
        if not members:
            del self._groups[group]
            self._last_seq.pop(group, None)
            self._owner_generations.pop(group, None)
            self._forget_replica(group)
            await asyncio.shield(self._announce("unsub", group))

    def _running_here(self) -> bool:
        """Started, on the running event loop."""
        return self._started is not None and self._started.done() and self._loop is asyncio.get_running_loop()

    async def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and self._loop.is_running():
                raise RuntimeError(
                    f"node {self.node} runs on another event loop; from another thread, only send() to "
                    "other nodes' channels and group_send() are supported (they append through it)"
                )
            if self._loop is not None:
                self._leave_dead_loop()
            self._loop = loop
            self._started = loop.create_future()
            try:
                await self._start()
            except BaseException as exc:
                self._started.set_exception(exc)
                self._loop = None
                raise
            self._started.set_result(None)
        elif not self._started.done():
            await asyncio.shield(self._started)

    def _leave_dead_loop(self) -> None:
        """The node's event loop has ended (an ``asyncio.run`` or ``async_to_sync`` call returned).
        Its tasks, futures, sockets and connections died with it; the node did not: its channels,
        groups and queued messages stay, and it resumes on the next loop where its reader stopped."""
        if self._heartbeat is not None:
            self._heartbeat.abandon()  # its thread ends by itself now that the loop is closed
            self._heartbeat = None
        self._tasks = []
        self._announcements = {}
        self._fastlanes.clear()
        self._closers.clear()
        self._gap_handlers.clear()
        for mailbox in self._mailboxes.values():
            mailbox.waiters.clear()
        for topic, ready in list(self._replica_ready.items()):  # an Event once waited on belongs to its loop
            self._replica_ready[topic] = asyncio.Event()
            if ready.is_set():
                self._replica_ready[topic].set()
        self._publisher = None
        if self.embedded:
            self.transport.forget_waiters()  # the streams and their topic servers' state live on
        elif self._given_transport is None:
            self.transport = None  # its connections belonged to the dead loop
        self._started = None
        self._loop = None

    async def _start(self) -> None:
        resuming = self._node_cursor is not None
        self.started_at = time.time()
        self.transport = self.transport or self._given_transport or self._make_transport()
        servers_ready = []
        if self.embedded:
            from topicserver.server import TopicServer

            if not self.topic_servers:
                self.topic_servers = [
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
            for server in self.topic_servers:
                servers_ready.append(asyncio.Event())
                self._spawn(server.run(servers_ready[-1]), f"dps-topic-server-{server.name}")
            if not resuming:
                await asyncio.gather(*(ready.wait() for ready in servers_ready))
        self.epoch = await self.transport.epoch()
        if self.live_ring:
            await self._follow_ring()
        after = self._node_cursor or await self.transport.last_id(node_stream(self.node))
        self._node_cursor = after
        self._spawn(self._read_node_stream(after), f"dps-node-reader-{self.node}")
        # A resumed embedded server waits for this node's answer to its barrier: the reader runs now.
        await asyncio.gather(*(ready.wait() for ready in servers_ready))
        await self.transport.heartbeat("node", self.node)
        self._start_heartbeat()
        if resuming:
            # Owners may have taken this node for dead while no loop ran it: announce every group again.
            await self._tell_owners("sub", [group for group in self._groups if group != CONTROL_GROUP])
        else:
            # A node of this name may have died holding memberships: owners forget them first.
            hello = entries.pack("hello", self.node)
            await self.transport.append_many([(inbox_stream(server), hello) for server in self.ring.members])
        await self._join_control()
        self._spawn(self._keep_alive(), f"dps-keep-alive-{self.node}")
        if self.drain_on_sigterm:
            self._drain_on_sigterm()
        self._spawn(self._sweep_idle_channels(), f"dps-channel-sweeper-{self.node}")
        if not self.embedded:
            self._spawn(self._watch_ring(), f"dps-ring-{self.node}")

    def _make_transport(self) -> Transport:
        if self.redis_url is None:
            return MemoryTransport(maxlen=self.stream_maxlen)
        from pubsub.transport.redis import redis_transport

        return redis_transport(self.redis_url, maxlen=self.stream_maxlen, wait=self.redis_wait)

    def _spawn(self, coroutine, name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coroutine, name=name))

    async def _sweep_idle_channels(self) -> None:
        """Forget channels nobody has received on for `expiry` seconds, and their groups."""
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self.expiry)
            now = time.monotonic()
            for channel, mailbox in list(self._mailboxes.items()):
                if mailbox.waiters:
                    continue
                if mailbox.idle_since is None:
                    mailbox.idle_since = now
                elif now - mailbox.idle_since >= self.expiry:
                    del self._mailboxes[channel]
                    for group in [g for g, members in self._groups.items() if channel in members]:
                        await self._leave_local(group, channel)
