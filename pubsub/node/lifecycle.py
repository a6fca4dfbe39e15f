"""A node's life on an event loop: starting on first use (on the running loop), leaving a loop
that died (tests, async_to_sync), the transport it runs on, and its background tasks."""

from __future__ import annotations

import asyncio
import logging
import time

from pubsub.core import entries
from pubsub.core.messages import CONTROL_GROUP
from pubsub.core.tasks import raise_if_cancelling
from pubsub.transport.base import Transport, inbox_stream, node_stream
from pubsub.transport.memory import MemoryTransport

logger = logging.getLogger("pubsub.layer")


class Lifecycle:
    """Mixed into TopicRingLayer."""

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
            if not self.topic_servers:
                self.topic_servers = self._embedded_topic_servers()
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
        from pubsub.transport.factory import redis_transport

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
