"""What a node sends to topic owners and other nodes: publishes (from any thread or event loop),
sub/unsub announcements in the order they were decided per topic, group changes of channels that
live elsewhere, and questions to an owner (presence lists, history)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from pubsub.core import entries
from pubsub.core.ring import HashRing
from pubsub.exceptions import TransportError
from pubsub.transport.base import Transport, inbox_stream, node_stream

logger = logging.getLogger("pubsub.layer")


class Sending:
    """Mixed into TopicRingLayer."""

    async def _publish(self, group: str, message: dict, origin: str) -> None:
        self.require_valid_group_name(group)
        self._check_message(message)
        entry = entries.pack("pub", group, entries.pack_message(message), origin)
        await self._append_from_anywhere(None, entry, group)
        self.stats["group_sends"] += 1

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
            self._first_tips.pop(group, None)
            self._owner_generations.pop(group, None)
            self._forget_replica(group)
            await asyncio.shield(self._announce("unsub", group))
