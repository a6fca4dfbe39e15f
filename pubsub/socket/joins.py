"""A socket's joins: authorizing, the channel's join hook, recovery of what was missed, presence,
its events, and every way a join ends (leave, error, crash, close)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from pubsub.core import protocol
from pubsub.exceptions import TransportError
from pubsub.socket.authorization import authorize
from pubsub.socket.channels import Channel, Reply, Stop
from pubsub.socket.recovery import after_for, decide, recover_param

logger = logging.getLogger("pubsub.socket.consumer")


class Joins:
    """Mixed into PhoenixSocket: its topics, each a Channel."""

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
            if ("tail" in message or "binary" in message) and message.get("except") != self.channel_name:
                await self.send_frame(
                    self.wire.broadcast_frame_with_ref(channel.encoded_ref, answer["epoch"], seq, message)
                )
            channel.last_seq = seq
        while channel.held:  # what arrived while replaying; _frame_for drops what was replayed
            held, channel.held = channel.held, None
            frames = [frame for frame in map(lambda message: self._frame_for(channel, message), held) if frame]
            channel.held = []  # (no await above: nothing arrived while it was None)
            for frame in frames:
                await self.send_frame(frame)
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
                await self.send_text(self.wire.presence_state_frame(channel.join_ref, channel.topic, state))

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

    async def _end_all(self, channels: list[Channel]) -> None:
        try:
            for channel in channels:
                await self._end(channel, "closed")
        except Exception as exc:
            logger.warning("leaving %d topics of an ended socket failed: %s", len(channels), exc)


async def _called(handler, *args):
    """Call a channel hook, plain or async."""
    result = handler(*args)
    return await result if inspect.isawaitable(result) else result
