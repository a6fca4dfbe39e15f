"""Broadcasts to a socket's joins: the frame for each join (its join_ref, a recovering join's
"<epoch>:<seq>" ref), the fastlane that writes it without a task, and messages lost on the way."""

from __future__ import annotations

import asyncio
import logging

from pubsub.core.messages import BROADCAST_TYPE
from pubsub.socket.channels import Channel
from pubsub.socket.fastlane import Disconnected

logger = logging.getLogger("pubsub.socket.consumer")


class Broadcasts:
    """Mixed into PhoenixSocket."""

    async def phx_broadcast(self, message: dict) -> None:
        """A broadcast for a topic this socket may have joined; the frame is pre-encoded."""
        join = self.joins.get(message["topic"])
        if join is not None:  # the topic may have been left while the message was queued
            await self.send_frame(self._frame_for(join, message))

    def _fastlane(self, message: dict) -> bool:
        """The layer's direct path for broadcasts: one string concatenation and a write, no task."""
        if message.get("type") != BROADCAST_TYPE or "binary" in message:
            return False  # (a binary frame goes through the socket's own send)
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

    def _frame_for(self, join: Channel, message: dict) -> str | bytes | None:
        """The frame of a broadcast for one join: its join_ref, and for a recovering join the ref
        "<epoch>:<seq>". None: held (its missed messages are being replayed), already sent, or past
        a gap (a recovering client must never see seq N+2 without N+1: its next rejoin would
        claim N+2 and lose N+1)."""
        if message.get("presence") and not join.presence_synced:
            return None  # presence_diff only to joins that got a presence_state (not the seed's sockets)
        if not join.recovering:
            if message.get("except") == self.channel_name:  # broadcast_from skips its sender
                return None
            return self.wire.broadcast_frame(join.encoded_ref, message)
        if join.held is not None:
            join.held.append(message)
            return None
        seq = message.get("seq")
        if not seq:  # not numbered (a presence change)
            return self.wire.broadcast_frame(join.encoded_ref, message)
        if seq <= join.last_seq or join.lost:
            return None
        if join.seq_known and seq != join.last_seq + 1:
            self._lose(join)
            return None
        join.last_seq, join.seq_known = seq, True
        if message.get("except") == self.channel_name:
            return None  # (counted as seen: the sender's own broadcast_from)
        return self.wire.broadcast_frame_with_ref(join.encoded_ref, message["epoch"], seq, message)

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
