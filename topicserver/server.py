"""The topic server: owner of the topics the ring gives it.

It reads its inbox stream, keeps topic -> nodes with local members, stamps each
published message with the topic's next sequence number and appends it once per
node that holds members (not once per subscriber). Per topic, messages leave in
sequence order. No Django views here; the runtopicserver command wraps it.

Durability: each inbox batch is committed in one pipeline, in this order: the
topics' last sequence numbers and the batch's stamps (entry id -> number), the
appends, the inbox cursor. A restarted server, or the successor of a dead one,
resumes after the cursor and resends a half-sent batch with the same numbers;
nodes drop numbers they have already seen.

Barrier: before serving a backlog (at start, or after adopting a ring
generation) the server asks every live node to adopt its generation, to
re-announce the topics it owns here and to acknowledge; with a live ring it also
waits until every live topic server has adopted the generation. The backlog is
then served membership first, so nobody misses a message accepted before.

Live ring: the members are the registered topic servers; a change gets a new
generation (compare-and-set). Entries for topics a server no longer owns are
forwarded to the owner with their origin (repeats are dropped) and any number
already stamped. Liveness: the server renews its heartbeat and forgets nodes
whose heartbeat expired (a node killed with -9 leaves no ghosts).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter, OrderedDict

import orjson

from pubsub import entries
from pubsub.control import CONTROL_GROUP
from pubsub.exceptions import TransportError
from pubsub.heartbeat import HeartbeatThread, start_heartbeat, stop_heartbeat
from pubsub.rates import RateMeter
from pubsub.ring import HashRing
from pubsub.tasks import raise_if_cancelling, stop_tasks
from pubsub.transport.base import FIRST_ID, History, Transport, inbox_stream, node_stream
from topicserver.presence import PresenceTable

__all__ = ["TopicServer", "IDEMPOTENCY_PREFIX", "IDEMPOTENCY_WINDOW"]

logger = logging.getLogger(__name__)

_RETRY_DELAY = 0.5
_REPLY_TTL = 30.0  # seconds an answer nobody took is kept
_SEND_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)  # about 3 s of trying
_SUMMARY_INTERVAL = 60.0
_IDLE_SEQUENCES = 100_000
_REMEMBERED_ORIGINS = 100_000
IDEMPOTENCY_PREFIX = "key:"  # a publish origin that is a caller's idempotency key (pubsub/api.py)
IDEMPOTENCY_WINDOW = 300.0  # seconds a topic's owner remembers such a key
_RING_RECHECK = 0.1  # at most this often, entries that only a newer ring sends make the ring be read


def _id_number(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _backlog_rank(fields: list, stamp: int) -> tuple[int, int]:
    """Backlog order: membership changes, then messages already numbered (by number), then the rest."""
    if fields[0] in ("sub", "unsub", "hello", "track", "untrack"):
        return (0, 0)
    seq = stamp or (fields[3] if fields[0] == "fwd" else 0)
    return (1, seq) if seq else (2, 0)


class TopicServer:
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
        self.ring_poll = min(1.0, liveness_ttl / 4)
        self.leaving = False
        self.epoch = ""
        self._pending_ring: tuple[int, list[str]] | None = None
        self._heartbeat: HeartbeatThread | None = None
        self._taken_over: set[str] = set()  # dead servers' names whose inboxes this server forwards
        self._takeover_lock = asyncio.Lock()
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
        self._kept: list[tuple[str, int, bytes]] = []  # this batch's messages for the histories
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
        stamps = await self.transport.load_stamps(self.name)
        logger.info(
            "topic server %s (generation %d) reading %s after %s", self.name, self.generation, self.inbox, cursor
        )
        tasks = [asyncio.get_running_loop().create_task(self._keep_alive(), name=f"dps-keep-alive-{self.name}")]
        if self.live_ring:
            tasks.append(asyncio.get_running_loop().create_task(self._watch_ring(), name=f"dps-ring-{self.name}"))
        try:
            cursor = await self._barrier_and_backlog(cursor, stamps)
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

    async def leave(self) -> None:
        """Hand this server's topics to the others (live ring): unregister, wait until a ring without
        it is adopted, keep forwarding what still arrives until the inbox is quiet. Call while run() runs."""
        self.leaving = True
        # Marked as leaving before it unregisters: its successors' barriers wait until it has adopted
        # the ring without it (it numbers its topics until then; two numbering one topic lose messages).
        await self.transport.heartbeat("leaving", self.name)
        await self._stop_heartbeat()
        await self.transport.forget("topicserver", self.name)
        try:
            await self._hand_over()
        finally:
            await self.transport.forget("leaving", self.name)

    async def _hand_over(self) -> None:
        deadline = time.monotonic() + 3 * self.liveness_ttl
        while time.monotonic() < deadline:
            generation, members = await self.transport.ring_state()
            if self.name not in members and self.generation >= generation:
                break
            # Itself excluded: a run() still starting may have renewed its heartbeat after leave() began.
            if not set(await self.transport.live("topicserver", self.liveness_ttl)) - {self.name}:
                # Nobody is left to hand over to (the whole cluster is stopping): what is
                # still in the inbox waits there for the next server of this name.
                logger.info("topic server %s: no other topic server is running; stopping", self.name)
                return
            await asyncio.sleep(0.05)
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 3 * self.ring_poll:
            # (No cursor yet: a server stopped while starting has served nothing; an empty inbox is quiet.)
            if await self.transport.last_id(self.inbox) != (await self.transport.load_cursor(self.name) or FIRST_ID):
                quiet_since = time.monotonic()
            await asyncio.sleep(0.05)
        logger.info("topic server %s: handed its topics over (generation %d)", self.name, self.generation)

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
                    cursor = await self._barrier_and_backlog(cursor, {})
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

    async def _barrier_and_backlog(self, cursor: str, stamps: dict[str, int]) -> str:
        """Make sure every live node has re-announced this server's topics, then serve the backlog.

        The backlog (entries up to now) is served membership first, and messages that
        already carry a sequence number (stamped by a previous owner) before new ones,
        so no subscriber misses a message accepted before the barrier.
        """
        await self._barrier()
        backlog: list[tuple[str, bytes]] = []
        tail = await self.transport.last_id(self.inbox)
        while _id_number(cursor) < _id_number(tail):
            batch = await self.transport.read(self.inbox, cursor, 10_000, 0)
            if not batch:
                break
            backlog.extend(batch)
            cursor = batch[-1][0]
        if backlog:
            logger.info("topic server %s: serving a backlog of %d entries", self.name, len(backlog))
            await self._process(backlog, stamps, membership_first=True)
        return cursor

    async def _barrier(self) -> None:
        """Ask live nodes to re-announce (and adopt this ring generation); wait for them and for the
        other topic servers to have adopted it, for at most two liveness TTLs."""
        token = f"{self.generation}:{secrets.token_hex(4)}"
        nodes = set(await self.transport.live("node", self.liveness_ttl))
        if nodes:
            announcement = entries.pack("owner", self.name, token, self.generation)
            await self.transport.append_many([(node_stream(node), announcement) for node in nodes])
        deadline = time.monotonic() + 2 * self.liveness_ttl
        while time.monotonic() < deadline:
            acks = await self.transport.barrier_acks(self.name)
            live_nodes = nodes & set(await self.transport.live("node", self.liveness_ttl))
            waiting = {node for node in live_nodes if acks.get(node) != token}
            if self.live_ring:
                generations = await self.transport.generation_acks()
                servers = set(await self.transport.live("topicserver", self.liveness_ttl))
                servers |= set(await self.transport.live("leaving", 3 * self.liveness_ttl)) - {self.name}
                waiting |= {s for s in servers if generations.get(s, -1) < self.generation}
            if not waiting:
                return
            await asyncio.sleep(0.02)
        logger.warning("topic server %s: barrier %s timed out waiting for %s", self.name, token, sorted(waiting))

    async def _process(self, batch: list[tuple[str, bytes]], stamps: dict[str, int], membership_first: bool) -> None:
        """Apply a batch, then commit its effects in one round trip (see Transport.commit_batch)."""
        decoded = []
        for entry_id, data in batch:
            try:
                decoded.append((entry_id, data, entries.unpack(data, entries.INBOX_OPS)))
            except entries.MalformedEntry as exc:
                self.stats["malformed"] += 1
                logger.warning("topic server %s skipped entry %s: %s", self.name, entry_id, exc)
        if membership_first:
            decoded.sort(key=lambda item: _backlog_rank(item[2], stamps.get(item[0], 0)))
        unknown = {f[1] for _, _, f in decoded if f[0] in ("pub", "fwd") and f[1] not in self.sequences}
        unknown = [topic for topic in unknown if self.owner(topic) == self.name]
        if unknown:  # (not yet numbered topics are cached as 0, so they are asked for once)
            loaded = await self.transport.load_sequences(unknown)
            self.sequences.update({topic: loaded.get(topic, 0) for topic in unknown})
        await self._load_history_epochs({f[1] for _, _, f in decoded if f[0] in ("pub", "fwd")})
        outgoing: list[tuple[str, bytes]] = []
        touched: dict[str, int] = {}
        stamped: dict[str, int] = {}
        for entry_id, data, fields in decoded:
            try:
                self.handle(entry_id, data, fields, stamps.get(entry_id, 0), outgoing, touched, stamped)
            except Exception:
                logger.exception("topic server %s failed on entry %s; carrying on", self.name, entry_id)
        # Whole presences go out after the batch, so re-announcements in it are all included.
        for topic, node in self._state_wanted:
            if node in self.topics.get(topic, ()):
                outgoing.append((node_stream(node), entries.pack("pstate", topic, self.presence.state(topic))))
        self._state_wanted.clear()
        kept, self._kept = self._kept, []
        history = History(kept, self.history_size, self.history_ttl, self._renewals(kept)) if kept else None
        await self._commit(touched, stamped, outgoing, batch[-1][0], history)
        if self.history_size:  # topics nobody holds are numbered too (for their history): bounded
            self._trim_sequences()  # after the commit: a trimmed number is read back from Redis
        await self._answer_history_asks()
        replies, self._replies = self._replies, []
        for key, answer in replies:
            try:
                await self.transport.put_reply(key, answer, _REPLY_TTL)
            except TransportError as exc:  # the asker times out and says so
                logger.warning("topic server %s: answering %s failed: %s", self.name, key, exc)

    async def _load_history_epochs(self, topics) -> None:
        """Know each published topic's history epoch; asked again after half a TTL (the history,
        and with it the epoch, expires after a TTL without messages)."""
        if not self.history_size:
            return
        now = time.monotonic()
        stale = [
            topic
            for topic in topics
            if self.owner(topic) == self.name
            and (topic not in self._history_epochs or now - self._history_epochs[topic][1] > self.history_ttl / 2)
        ]
        if stale:
            epochs = await self.transport.history_epochs(stale, self.history_ttl)
            self._history_epochs.update({topic: (epoch, now) for topic, epoch in epochs.items()})
            if len(self._history_epochs) > 4 * _IDLE_SEQUENCES:  # bounded: the longest unchecked go
                oldest = sorted(self._history_epochs, key=lambda t: self._history_epochs[t][1])
                for topic in oldest[:_IDLE_SEQUENCES]:
                    del self._history_epochs[topic]

    def _renewals(self, kept) -> set[str]:
        """Topics whose history expiry to renew with this batch: new ones, and others every tenth of
        the TTL (an XADD keeps a key's expiry, so renewing it per message would be waste)."""
        now = time.monotonic()
        due = {topic for topic, _, _ in kept if now - self._history_renewed.get(topic, -1e9) > self.history_ttl / 10}
        self._history_renewed.update(dict.fromkeys(due, now))
        if len(self._history_renewed) > 4 * _IDLE_SEQUENCES:  # bounded: forget the longest-renewed
            for topic in sorted(self._history_renewed, key=self._history_renewed.get)[:_IDLE_SEQUENCES]:
                del self._history_renewed[topic]
        return due

    async def _answer_history_asks(self) -> None:
        """``{"epoch", "seq", "first", "messages": [[seq, message], ...]}`` after each asker's seq."""
        asks, self._history_asks = self._history_asks, []
        if asks:
            try:
                await self._load_history_epochs({topic for topic, _, _ in asks})
            except TransportError as exc:
                logger.warning("topic server %s: history epochs unavailable: %s", self.name, exc)
                return
        for topic, key, after in asks:
            kept = {}
            try:  # never raises: the batch is committed already (the asker times out and says so)
                if topic not in self.sequences:
                    self.sequences[topic] = (await self.transport.load_sequences([topic])).get(topic, 0)
                if self.history_size and after < self.sequences[topic]:  # (a fresh start needs no messages)
                    kept = dict(await self.transport.history(topic))  # repeats of a retried commit fold
            except TransportError as exc:
                logger.warning("topic server %s: reading the history of %s failed: %s", self.name, topic, exc)
                continue
            answer = {
                "epoch": self._history_epochs.get(topic, ("", 0))[0],
                "seq": self.sequences.get(topic, 0),
                "first": min(kept) if kept else None,
                "messages": [[seq, kept[seq]] for seq in sorted(kept) if seq > after],
            }
            self._replies.append((key, entries.pack_message(answer)))

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
            message = entries.pack("msg", topic, 0, entries.pack_message(diff.as_message()), "")
            outgoing.extend((node_stream(node), message) for node in nodes)
            self.stats["presence_diffs"] += 1
        if outgoing:
            await self._commit({}, {}, outgoing, cursor)

    async def _commit(self, touched, stamped, outgoing, cursor, history=None) -> None:
        """Commit, retrying a while; a retry may repeat entries, which nodes and owners drop as
        repeats (sequence numbers, origins). What still fails is counted, logged, and seen as a gap."""
        for delay in _SEND_RETRY_DELAYS:
            try:
                await self.transport.commit_batch(self.name, touched, stamped, outgoing, cursor, history)
                return
            except TransportError as exc:
                error = exc
                await asyncio.sleep(delay)
        self.stats["lost_node_messages"] += len(outgoing)
        logger.error("topic server %s lost %d node messages: %s", self.name, len(outgoing), error)

    # Ring generations (live ring only)

    async def _watch_ring(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self.ring_poll)
            try:
                await self._watch_ring_once()
                await self._sweep_dead_inboxes()
            except TransportError as exc:
                logger.warning("topic server %s: ring check failed: %s", self.name, exc)

    def _signs_of_a_newer_ring(self, batch: list[tuple[str, bytes]]) -> bool:
        """Entries only a newer ring would send here: a forward, or a topic this ring gives another
        server. Then the ring is checked at once rather than at the next poll, so they are not
        passed on by a stale ring (to a dead server's inbox, where they would wait for good)."""
        if not self.live_ring or time.monotonic() - self._ring_checked_at < _RING_RECHECK:
            return False
        for _, data in batch:
            try:
                fields = entries.unpack(data, entries.INBOX_OPS)
            except entries.MalformedEntry:
                continue
            if fields[0] == "fwd" or (fields[0] != "hello" and self.owner(fields[1]) != self.name):
                self._ring_checked_at = time.monotonic()
                return True
        return False

    async def _sweep_dead_inboxes(self) -> None:
        """Keep forwarding what still lands in an inbox taken over from a dead server (an append
        made by a process that had not yet adopted the new ring), until its name returns."""
        if self.ring is None:
            return
        for gone in sorted(self._taken_over):
            if gone in self.ring.members or self.ring.owner(gone) != self.name:
                self._taken_over.discard(gone)
            else:
                await self._take_over_inbox(gone)

    async def _watch_ring_once(self) -> None:
        """Propose the live members as the ring when they changed; note a newer generation to adopt."""
        await self._check_epoch()
        live = sorted(await self.transport.live("topicserver", self.liveness_ttl))
        generation, members = await self.transport.ring_state()
        if (
            self.name in live
            and members != live
            and not self.leaving
            and time.monotonic() >= self._trust_registry_after
        ):
            if await self.transport.propose_ring(generation, live) is not None:
                generation, members = generation + 1, live
                logger.info("topic server %s: ring generation %d is %s", self.name, generation, members)
            else:  # another server was first: note its generation instead
                generation, members = await self.transport.ring_state()
        if generation != self.generation and members:
            self._pending_ring = (generation, members)

    async def _join_live_ring(self) -> None:
        """At start: wait (a bounded while) until some ring generation is noted, then adopt it.

        Several servers starting together race to propose the first ring; a proposal that lost
        leaves nothing noted until the winner's generation is read, so read again rather than
        adopt nothing (that crashed one of three servers started at once).
        """
        deadline = time.monotonic() + self.liveness_ttl
        while True:
            raise_if_cancelling()
            await self._watch_ring_once()
            if self._pending_ring is not None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        if self._pending_ring is not None:
            await self._adopt_pending_ring()

    async def _check_epoch(self) -> None:
        """Redis restarted empty: its registries are empty until every process renews its heartbeat,
        so for one TTL nobody counts as dead and no ring is proposed."""
        epoch = await self.transport.epoch()
        if epoch != self.epoch:
            self._history_epochs.clear()  # lost with Redis: every topic's history starts a new epoch
            self._history_renewed.clear()
            if self.epoch:
                logger.warning("topic server %s: Redis restarted empty; trusting no registry for a TTL", self.name)
                self._trust_registry_after = time.monotonic() + self.liveness_ttl
                self.generation = -1
            self.epoch = epoch

    async def _adopt_pending_ring(self) -> None:
        """Switch to the noted generation at a batch boundary; take over dead members' inboxes; acknowledge."""
        if self._pending_ring is None:
            return
        generation, members = self._pending_ring
        self._pending_ring = None
        previous = self.ring
        self.ring, self.generation = HashRing(members), generation
        for topic in list(self.sequences):  # a topic that changed owner: reload its number when needed
            if previous is None or previous.owner(topic) != self.ring.owner(topic):
                del self.sequences[topic]
        for topic in list(self.presence.topics.keys() | self.presence.pending.keys()):
            if self.ring.owner(topic) != self.name:  # its new owner has it from the nodes' re-announcements
                self.presence.forget_topic(topic)
        live = set(await self.transport.live("topicserver", self.liveness_ttl))
        for gone in sorted(set(previous.members if previous else ()) - set(members) - live):
            if self.ring.owner(gone) == self.name:
                await self._take_over_inbox(gone)
        await self.transport.ack_generation(self.name, generation)
        self.stats["ring_changes"] += 1

    async def _take_over_inbox(self, gone: str) -> None:
        """A dead member's accepted entries go to their new owners, with any sequence number it stamped."""
        async with self._takeover_lock:  # the ring watcher's sweep and a ring adoption may meet here
            self._taken_over.add(gone)
            if gone in await self.transport.live("leaving", 3 * self.liveness_ttl):
                # Still handing over: it serves its inbox until quiet. Read from its cursor now, a
                # batch it is committing would be sent twice; the sweep forwards what is left after.
                return
            await self._forward_dead_inbox(gone)

    async def _forward_dead_inbox(self, gone: str) -> None:
        inbox = inbox_stream(gone)
        cursor = await self.transport.load_cursor(gone) or FIRST_ID
        stamps = await self.transport.load_stamps(gone)
        moved = 0
        while True:
            raise_if_cancelling()
            batch = await self.transport.read(inbox, cursor, 10_000, 0)
            if not batch:
                break
            outgoing = []
            for entry_id, data in batch:
                try:
                    fields = entries.unpack(data, entries.INBOX_OPS)
                except entries.MalformedEntry:
                    continue
                if fields[0] in ("pub", "fwd"):
                    outgoing.append(self._forward(fields, stamps.get(entry_id, 0)))
                elif fields[0] in ("sub", "unsub", "track", "untrack", "plist", "hist"):  # (not "hello")
                    outgoing.append((inbox_stream(self.owner(fields[1])), data))
            if outgoing:
                await self.transport.append_many(outgoing)
            moved += len(outgoing)
            cursor = batch[-1][0]
        await self.transport.set_cursor(gone, cursor)
        if moved:  # a server that left gracefully handed everything over already
            logger.info("topic server %s: took over %d entries of the dead %s", self.name, moved, gone)

    def _forward(self, fields: list, stamp: int) -> tuple[str, bytes]:
        topic, message = fields[1], fields[2]
        if fields[0] == "fwd":
            seq, origin = fields[3] or stamp, fields[4]
        else:
            seq, origin = stamp, fields[3]
        self.stats["forwarded"] += 1
        return inbox_stream(self.owner(topic)), entries.pack("fwd", topic, message, seq, origin)

    async def _keep_alive(self) -> None:
        """Renew this server's heartbeat; forget nodes whose heartbeat expired; log a summary now and then."""
        last_summary = (0.0, None)
        rate = RateMeter()
        while True:
            raise_if_cancelling()
            await asyncio.sleep(min(1.0, self.liveness_ttl / 3))
            last_summary = self._log_summary(*last_summary)
            try:
                await self._check_epoch()
                if not self.leaving and self._heartbeat is None:
                    await self.transport.heartbeat("topicserver", self.name)
                snapshot = orjson.dumps(self.snapshot(rate))
                await self.transport.put_snapshot("topicserver", self.name, snapshot, 3 * self.liveness_ttl)
                live = await self.transport.live("node", self.liveness_ttl)
            except TransportError as exc:
                logger.warning("topic server %s: liveness check failed: %s", self.name, exc)
                continue
            if time.monotonic() < self._trust_registry_after:
                continue
            expired = self.node_topics.keys() - live.keys()
            for node in expired:
                logger.info("topic server %s: node %s missed its heartbeat", self.name, node)
                self.stats["expired_nodes"] += 1
                self.drop_node(node)
            if expired:  # a node that was only slow reads this and announces its members again
                notice = entries.pack("dropped", self.name)
                try:
                    await self.transport.append_many([(node_stream(node), notice) for node in expired])
                except TransportError as exc:
                    logger.warning("topic server %s: telling dropped nodes failed: %s", self.name, exc)

    def user_topics(self) -> int:
        """Topics with members on some node, less the nodes' control group."""
        return len(self.topics) - (CONTROL_GROUP in self.topics)

    def snapshot(self, rate: RateMeter | None = None) -> dict:
        """What this server reports about itself: counters, and per topic its nodes, last seq and rate."""
        now = time.monotonic()
        elapsed = now - self._snapshot_at
        topics = {}
        for topic, nodes in self.topics.items():
            if topic == CONTROL_GROUP:  # the nodes' own channel for orders, not a user's topic
                continue
            seq = self.sequences.get(topic, 0)
            previous = self._snapshot_sequences.get(topic, seq)
            topics[topic] = {
                "nodes": sorted(nodes),
                "seq": seq,
                "per_s": (seq - previous) / elapsed if elapsed else 0.0,
                "present": self.presence.counts(topic),  # (clients, users)
            }
        self._snapshot_at = now
        self._snapshot_sequences = {topic: info["seq"] for topic, info in topics.items()}
        return {
            "name": self.name,
            "started_at": self.started_at,
            "at": time.time(),
            "stats": dict(self.stats),
            "published_per_s": rate.per_second(self.stats["published"]) if rate else None,
            "inbox_lag": self.inbox_lag,
            "topics": topics,
        }

    def _log_summary(self, logged_at: float, logged: tuple | None) -> tuple[float, tuple | None]:
        now = asyncio.get_running_loop().time()
        summary = (self.user_topics(), len(self.node_topics), self.stats["published"], self.stats["node_messages"])
        if now - logged_at < _SUMMARY_INTERVAL or summary == logged:
            return logged_at, logged
        logger.info(
            "topic server %s: %d topics with members on %d nodes; %d published, %d node messages so far",
            self.name,
            *summary,
        )
        return now, summary

    def handle(self, entry_id, data, fields, stamp, outgoing, touched, stamped) -> None:
        """Apply one inbox entry: what it sends goes to outgoing, sequence numbers to touched/stamped."""
        op = fields[0]
        if op in ("pub", "fwd"):
            topic = fields[1]
            if self.owner(topic) != self.name:  # the ring moved on: pass it to the owner
                outgoing.append(self._forward(fields, stamp))
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
                stamp = fields[3] or stamp
            self.stats["published"] += 1
            nodes = self.topics.get(topic, ())
            if not nodes and not self.history_size:  # nobody would see it, and nobody could ask for it later
                return
            seq = stamp or self.sequences.get(topic, 0) + 1
            self.sequences[topic] = max(seq, self.sequences.get(topic, 0))
            touched[topic] = self.sequences[topic]
            stamped[entry_id] = seq
            epoch = self._history_epochs.get(topic, ("", 0))[0]
            message = entries.pack("msg", topic, seq, fields[2], epoch)
            outgoing.extend((node_stream(node), message) for node in nodes)
            if self.history_size:
                self._kept.append((topic, seq, fields[2]))
            self.stats["node_messages"] += len(nodes)
        elif op in ("sub", "unsub", "track", "untrack", "plist", "hist"):
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

    def _trim_sequences(self) -> None:
        """Keep the sequence of a topic nobody holds (a quick rejoin continues it), within a bound;
        over it, the oldest half of the idle ones go at once, so a trim is rare (a trimmed topic's
        number is read back from Redis when it is next published to)."""
        excess = len(self.sequences) - len(self.topics) - _IDLE_SEQUENCES
        if excess > 0:
            excess += _IDLE_SEQUENCES // 2
            idle = [topic for topic in self.sequences if topic not in self.topics][:excess]
            for topic in idle:
                del self.sequences[topic]

    def drop_node(self, node: str) -> int:
        """Forget every membership of node (restarted or dead); returns how many topics it held."""
        held = list(self.node_topics.get(node, ()))
        for topic in held:
            self.forget(topic, node)
        if held:
            logger.info("topic server %s: dropped node %s from %d topics", self.name, node, len(held))
        return len(held)
