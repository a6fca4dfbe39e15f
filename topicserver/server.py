"""The topic server: owner of the topics the ring gives it.

It reads its inbox stream, keeps topic -> nodes with local members, numbers each published
message with the topic's next sequence number and appends it once per node that holds members
(not once per subscriber). Per topic, messages leave in sequence order. No Django views here;
the runtopicserver command wraps it.

Where each rule lives:

- ``fencing.py``: numbering under the topics' fences, delivery, and what a paused owner may still
  do when it wakes (the failover rules);
- ``ring_generations.py``: proposing and adopting ring generations, the barrier after each;
- ``takeover.py``: leaving gracefully, and forwarding the inboxes of dead servers;
- ``history_keeping.py``: history epochs and expiries, answering nodes' history asks;
- ``liveness.py``: heartbeats, nodes given up for dead, the snapshot;
- ``presence.py``: who is in each topic.

Durability: a batch is committed as the topics' numbers and history (one fenced script per topic),
then the appends to the nodes, then the inbox cursor. A restarted server, or the successor of a dead
one, resumes after the cursor and resends with the stored number what was numbered already (the
history says which); nodes drop numbers they have already seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict

from pubsub.core import entries
from pubsub.core.heartbeat import HeartbeatThread, start_heartbeat, stop_heartbeat
from pubsub.core.ring import HashRing
from pubsub.core.tasks import raise_if_cancelling, stop_tasks
from pubsub.exceptions import TransportError
from pubsub.transport.base import Transport, id_order, inbox_stream, node_stream
from topicserver.fencing import Fencing, Pending
from topicserver.history_keeping import HistoryKeeping
from topicserver.liveness import Liveness
from topicserver.presence import PresenceTable
from topicserver.ring_generations import RingGenerations
from topicserver.takeover import InboxTakeover

__all__ = ["TopicServer", "IDEMPOTENCY_PREFIX", "IDEMPOTENCY_WINDOW"]

logger = logging.getLogger(__name__)

_RETRY_DELAY = 0.5
_REPLY_TTL = 30.0  # seconds an answer nobody took is kept
_REMEMBERED_ORIGINS = 100_000
IDEMPOTENCY_PREFIX = "key:"  # a publish origin that is a caller's idempotency key (pubsub/http/api.py)
IDEMPOTENCY_WINDOW = 300.0  # seconds a topic's owner remembers such a key
_MEMBERSHIP_OPS = ("sub", "unsub", "track", "untrack", "plist", "hist")


def _backlog_rank(fields: list, stored: int) -> tuple[int, int]:
    """Backlog order: membership changes, then messages already numbered (by number), then the rest."""
    if fields[0] in ("sub", "unsub", "hello", "track", "untrack"):
        return (0, 0)
    seq = stored or (fields[3] if fields[0] == "fwd" else 0)
    return (1, seq) if seq else (2, 0)


class TopicServer(Fencing, RingGenerations, InboxTakeover, HistoryKeeping, Liveness):
    """Membership and fan-out for one ring member."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        *,
        members: list[str] | None = None,
        liveness_ttl: float = 5.0,
        batch_size: int = 512,
        block_ms: int = 1000,
        presence_window: float = 0.1,
        history_size: int = 100,
        history_ttl: float = 300.0,
    ):
        """members: the static ring; None for a live ring built from the registered topic servers."""
        self.name = name
        self.live_ring = members is None
        self.ring = None if members is None else HashRing(members)
        self.generation = 0
        self._highest_generation = 0  # proposals go past it, even after Redis lost the ring
        self._ring_lost = False  # Redis restarted empty: adopt its next ring, whatever its number
        self.ring_poll = min(1.0, liveness_ttl / 4)
        self.leaving = False
        self.epoch = ""
        self._pending_ring: tuple[int, list[str]] | None = None
        self._heartbeat: HeartbeatThread | None = None
        self._taken_over: set[str] = set()  # dead servers' names whose inboxes this server forwards
        self._takeover_lock = asyncio.Lock()
        self._inbox_taken = False  # a successor took this server's inbox over (it was thought dead)
        self._ring_checked_at = 0.0
        self._trust_registry_after = 0.0
        self._origins: OrderedDict[str, None] = OrderedDict()
        self._keys: OrderedDict[str, float] = OrderedDict()  # idempotency keys -> when first seen
        self.transport = transport
        self.liveness_ttl = liveness_ttl
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.inbox = inbox_stream(name)
        self.topics: dict[str, set[str]] = {}  # topic -> nodes holding members
        self.node_topics: dict[str, set[str]] = {}  # node -> its topics here (the inverse index)
        self.sequences: dict[str, int] = {}
        self.presence = PresenceTable(presence_window)
        self._state_wanted: set[tuple[str, str]] = set()  # (topic, node) to send the whole presence to
        self._replies: list[tuple[str, bytes]] = []  # (reply key, answer) to requests of this batch
        self.history_size = history_size  # 0: no history, no epochs
        self.history_ttl = history_ttl
        self._history_epochs: dict[str, tuple[str, float]] = {}  # topic -> (epoch, checked at)
        self._history_renewed: dict[str, float] = {}  # topic -> when its history's expiry was last renewed
        self._history_asks: list[tuple[str, str, int]] = []  # (topic, reply key, after seq)
        self.stats: Counter[str] = Counter()
        self.started_at = time.time()
        self.inbox_lag = 0.0
        self._snapshot_at = time.monotonic()
        self._snapshot_sequences: dict[str, int] = {}

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Serve until cancelled; a bad entry or a lost connection is logged, never fatal.

        Run again (on a new event loop, the embedded mode's), it resumes after its last batch."""
        self._takeover_lock = asyncio.Lock()  # a lock once waited on belongs to that loop
        # Resume after the last committed batch: what was accepted while this server was down is served
        # now. A first start begins at its inbox's end as it is *before* it registers: once registered,
        # a ring with it may be adopted at once and entries forwarded to it (a start position taken
        # after that skipped them: 4 messages lost to every subscriber of a topic in 1 of 4 joins).
        cursor = await self.transport.load_cursor(self.name) or await self.transport.last_id(self.inbox)
        await self.transport.heartbeat("topicserver", self.name)
        self._start_heartbeat()
        self.epoch = await self.transport.epoch()
        if self.live_ring:
            await self._join_live_ring()
        logger.info(
            "topic server %s (generation %d) reading %s after %s", self.name, self.generation, self.inbox, cursor
        )
        tasks = [asyncio.get_running_loop().create_task(self._keep_alive(), name=f"dps-keep-alive-{self.name}")]
        if self.live_ring:
            tasks.append(asyncio.get_running_loop().create_task(self._watch_ring(), name=f"dps-ring-{self.name}"))
        try:
            cursor = await self._barrier_and_backlog(cursor)
            if ready is not None:
                ready.set()
            await self._read_inbox(cursor)
        finally:
            await self._stop_heartbeat()
            await stop_tasks(tasks)

    def _start_heartbeat(self) -> None:
        """Renewed from a thread where the backend allows: a busy server is not a dead one."""
        if self.leaving:  # stopped while it was still starting
            return
        self._heartbeat = start_heartbeat(self.transport, "topicserver", self.name, self.liveness_ttl)

    async def _stop_heartbeat(self) -> None:
        heartbeat, self._heartbeat = self._heartbeat, None
        await stop_heartbeat(heartbeat)

    def owner(self, topic: str) -> str:
        """Who owns topic now: by the live ring, or this server for a static ring (it is only sent its own)."""
        return self.ring.owner(topic) if self.live_ring and self.ring is not None else self.name

    async def _read_inbox(self, cursor: str) -> None:
        while True:
            raise_if_cancelling()
            try:
                if self._pending_ring is not None:
                    pending = self._pending_ring
                    try:
                        await self._adopt_pending_ring()
                    except TransportError:
                        self._pending_ring = self._pending_ring or pending  # try again on the next turn
                        raise
                    cursor = await self._barrier_and_backlog(cursor)
                await self._announce_presence(cursor)
                batch = await self.transport.read(self.inbox, cursor, self.batch_size, self._read_block_ms())
            except TransportError as exc:
                logger.warning("topic server %s: reading its inbox failed (%s); retrying", self.name, exc)
                await asyncio.sleep(_RETRY_DELAY)
                continue
            if batch and self._pending_ring is None and self._signs_of_a_newer_ring(batch):
                try:
                    await self._watch_ring_once()
                except TransportError as exc:
                    logger.warning("topic server %s: ring check failed: %s", self.name, exc)
            if batch and self._pending_ring is not None:
                # A new ring was noted while this read waited: these entries (often the nodes'
                # announcements for it) must be judged by the new ring, so they are served in its
                # backlog. Served with the old one, a "sub" went to a dead owner and the messages
                # behind it found no node holding their topic.
                continue
            if batch:
                appended = self.transport.id_time(batch[-1][0])
                self.inbox_lag = max(0.0, time.time() - appended) if appended is not None else 0.0
                try:
                    await self._process(batch, {}, membership_first=False)
                except TransportError as exc:  # raised before the batch was applied: served again
                    logger.warning("topic server %s: preparing a batch failed (%s); retrying", self.name, exc)
                    await asyncio.sleep(_RETRY_DELAY)
                    continue
                cursor = batch[-1][0]

    async def _barrier_and_backlog(self, cursor: str) -> str:
        """Make sure every live node has re-announced this server's topics, then serve the backlog.

        The backlog (entries up to now) is served membership first, and messages that
        already carry a sequence number (stored by this or a previous owner) before new ones,
        so no subscriber misses a message accepted before the barrier.
        """
        await self._barrier()
        cursor = await self._reclaim_inbox(cursor)
        backlog: list[tuple[str, bytes]] = []
        tail = await self.transport.last_id(self.inbox)
        while id_order(cursor) < id_order(tail):
            batch = await self.transport.read(self.inbox, cursor, 10_000, 0)
            if not batch:
                break
            backlog.extend(batch)
            cursor = batch[-1][0]
        if backlog:
            logger.info("topic server %s: serving a backlog of %d entries", self.name, len(backlog))
            await self._process(backlog, await self._committed_numbers(backlog), membership_first=True)
        return cursor

    async def _process(self, batch: list[tuple[str, bytes]], stored: dict[str, int], membership_first: bool) -> None:
        """Apply a batch, then commit its effects (topicserver/fencing.py); stored: entry id -> the
        number a message of it was stored with before (a crash between numbering and delivery)."""
        decoded = []
        for entry_id, data in batch:
            try:
                decoded.append((entry_id, data, entries.unpack(data, entries.INBOX_OPS)))
            except entries.MalformedEntry as exc:
                self.stats["malformed"] += 1
                logger.warning("topic server %s skipped entry %s: %s", self.name, entry_id, exc)
        if membership_first:
            decoded.sort(key=lambda item: _backlog_rank(item[2], stored.get(item[0], 0)))
        # A sub's topic too: the node is told the topic's last number (its "tip") behind the sub.
        unknown = {f[1] for _, _, f in decoded if f[0] in ("pub", "fwd", "sub") and f[1] not in self.sequences}
        unknown = [topic for topic in unknown if self.owner(topic) == self.name]
        if unknown:  # (not yet numbered topics are cached as 0, so they are asked for once)
            loaded = await self.transport.load_sequences(unknown)
            self.sequences.update({topic: loaded.get(topic, 0) for topic in unknown})
        await self._load_history_epochs({f[1] for _, _, f in decoded if f[0] in ("pub", "fwd")})
        outgoing: list[tuple[str, bytes]] = []
        pending: list[Pending] = []
        for entry_id, data, fields in decoded:
            try:
                self.handle(data, fields, stored.get(entry_id, 0), outgoing, pending)
            except Exception:
                logger.exception("topic server %s failed on entry %s; carrying on", self.name, entry_id)
        # Whole presences go out after the batch, so re-announcements in it are all included; and the
        # topic's last number before the batch: a node that was taken for dead (frozen past its TTL)
        # missed what was numbered meanwhile, and with no later message it would never see the gap.
        states = []
        for topic, node in self._state_wanted:
            if node in self.topics.get(topic, ()):
                states.append((node_stream(node), entries.pack("pstate", topic, self.presence.state(topic))))
                states.append((node_stream(node), entries.pack("tip", topic, self.sequences.get(topic, 0))))
        self._state_wanted.clear()
        await self._commit(pending, outgoing, states, batch[-1][0])
        if self.history_size:  # topics nobody holds are numbered too (for their history): bounded
            self._trim_sequences()  # after the commit: a trimmed number is read back from Redis
        await self._answer_history_asks()
        replies, self._replies = self._replies, []
        for key, answer in replies:
            try:
                await self.transport.put_reply(key, answer, _REPLY_TTL)
            except TransportError as exc:  # the asker times out and says so
                logger.warning("topic server %s: answering %s failed: %s", self.name, key, exc)

    def _read_block_ms(self) -> int:
        """Wait for entries no longer than until the next presence diff is due."""
        due = self.presence.next_due()
        if due is None:
            return self.block_ms
        return max(1, min(self.block_ms, int((due - time.monotonic()) * 1000) + 1))

    async def _announce_presence(self, cursor: str) -> None:
        """Send each topic's coalesced presence diff whose window has passed, in order with its messages."""
        due = self.presence.due()
        if not due:
            return
        outgoing: list[tuple[str, bytes]] = []
        for topic, diff in due:
            nodes = self.topics.get(topic)
            if not nodes:
                continue
            # Not numbered (seq 0): history keeps messages only, and a diff is no gap in them.
            message = entries.pack("msg", topic, 0, entries.pack_message(diff.as_message()), "", self.generation)
            outgoing.extend((node_stream(node), message) for node in nodes)
            self.stats["presence_diffs"] += 1
        if outgoing:
            await self._commit([], outgoing, [], cursor)

    def handle(self, data: bytes, fields: list, stored: int, outgoing: list, pending: list[Pending]) -> None:
        """Apply one inbox entry: what it sends on goes to outgoing, the messages to number to pending."""
        op = fields[0]
        if op in ("pub", "fwd"):
            topic = fields[1]
            if self.owner(topic) != self.name:  # the ring moved on: pass it to the owner
                outgoing.append(self._forward(fields, stored))
                return
            origin = fields[4] if op == "fwd" else fields[3]
            if origin in self._origins:  # repeated by a retried append, a retried commit or a second forwarder
                self.stats["repeats"] += 1
                return
            self._origins[origin] = None
            if len(self._origins) > _REMEMBERED_ORIGINS:
                self._origins.popitem(last=False)
            if origin.startswith(IDEMPOTENCY_PREFIX) and self._seen_key(origin):
                self.stats["idempotent_repeats"] += 1
                return
            if op == "fwd":
                stored = fields[3] or stored
            self.stats["published"] += 1
            nodes = tuple(self.topics.get(topic, ()))
            if not nodes and not self.history_size:  # nobody would see it, and nobody could ask for it later
                return
            pending.append(Pending(topic, fields[2], origin, stored, nodes))
        elif op in _MEMBERSHIP_OPS:
            topic = fields[1]
            if self.owner(topic) != self.name:
                outgoing.append((inbox_stream(self.owner(topic)), data))
            elif op == "sub":
                node = fields[2]
                self.topics.setdefault(topic, set()).add(node)
                if node not in self.node_topics:
                    logger.info("topic server %s: node %s holds members of its topics", self.name, node)
                self.node_topics.setdefault(node, set()).add(topic)
                self._state_wanted.add((topic, node))
            elif op == "unsub":
                self.forget(topic, fields[2])
            elif op == "track":
                _, _, node, key, meta, quiet = fields
                if node in self.topics.get(topic, ()):  # a track behind an unsub (or a drop) is stale
                    self.presence.track(topic, node, key, meta, quiet)
            elif op == "untrack":
                _, _, _, key, ref = fields
                self.presence.untrack(topic, key, ref)
            elif op == "plist":
                self._replies.append((fields[2], entries.pack_message(self.presence.state(topic))))
            else:
                self._history_asks.append((topic, fields[2], fields[3]))
        elif op == "hello":
            self.drop_node(fields[1])

    def _seen_key(self, origin: str) -> bool:
        """An idempotency key (``key:topic:key``) seen within IDEMPOTENCY_WINDOW seconds? Remember it."""
        now = time.monotonic()
        while self._keys:
            oldest, seen_at = next(iter(self._keys.items()))
            if now - seen_at < IDEMPOTENCY_WINDOW:
                break
            del self._keys[oldest]
        if origin in self._keys:
            return True
        self._keys[origin] = now
        return False

    def forget(self, topic: str, node: str) -> None:
        self.presence.drop(topic, node)
        nodes = self.topics.get(topic)
        if nodes is not None:
            nodes.discard(node)
            if not nodes:
                del self.topics[topic]
                self._trim_sequences()
        held = self.node_topics.get(node)
        if held is not None:
            held.discard(topic)
            if not held:
                del self.node_topics[node]

    def drop_node(self, node: str) -> int:
        """Forget every membership of node (restarted or dead); returns how many topics it held."""
        held = list(self.node_topics.get(node, ()))
        for topic in held:
            self.forget(topic, node)
        if held:
            logger.info("topic server %s: dropped node %s from %d topics", self.name, node, len(held))
        return len(held)
