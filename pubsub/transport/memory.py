"""The in-memory transport: streams as bounded deques in this process (the embedded default)."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from pubsub.transport.base import FENCED, FIRST_ID, OK, TAKEN, Numbering, commit_in_steps, new_epoch

__all__ = ["MemoryTransport"]


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Stream:
    __slots__ = ("entries", "next_number", "waiters")

    def __init__(self, maxlen: int):
        self.entries: deque[tuple[int, bytes]] = deque(maxlen=maxlen)
        self.next_number = 1
        self.waiters: list[asyncio.Future] = []


class MemoryTransport:
    """Same semantics as the Redis transport (ids, bounds, blocking reads), no network."""

    def __init__(self, maxlen: int = 100_000):
        self.maxlen = maxlen
        self._streams: dict[str, _Stream] = {}
        self._registry: dict[tuple[str, str], float] = {}
        self._snapshots: dict[tuple[str, str], tuple[float, bytes]] = {}
        self._ring: tuple[int, list[str]] = (0, [])
        self._generation_acks: dict[str, int] = {}
        self._barriers: dict[str, dict[str, str]] = {}
        self._sequences: dict[str, int] = {}
        self._cursors: dict[str, str] = {}
        self._fences: dict[str, int] = {}  # topic -> newest generation that numbered it
        self._last_numbered: dict[str, tuple[int, str]] = {}  # topic -> (generation, origin) of its last number
        self._holders: dict[str, int] = {}  # server -> newest generation that read its inbox
        self._replies: dict[str, asyncio.Future] = {}
        self._histories: dict[str, tuple[deque, float]] = {}  # topic -> (seq, origin, message) kept, expiry
        self._history_epochs: dict[str, tuple[str, float]] = {}

    def forget_waiters(self) -> None:
        """Drop blocked readers of an event loop that has ended (the streams themselves stay)."""
        for stream in self._streams.values():
            stream.waiters = [waiter for waiter in stream.waiters if not waiter.get_loop().is_closed()]

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = _Stream(self.maxlen)
        return stream

    async def append(self, stream: str, data: bytes) -> None:
        self._append(stream, data)

    async def append_many(self, items: list[tuple[str, bytes]]) -> None:
        for stream, data in items:
            self._append(stream, data)

    def _append(self, name: str, data: bytes) -> None:
        stream = self._stream(name)
        stream.entries.append((stream.next_number, data))
        stream.next_number += 1
        waiters, stream.waiters = stream.waiters, []
        for waiter in waiters:
            _wake(waiter)

    async def last_id(self, stream: str) -> str:
        number = self._stream(stream).next_number - 1
        return f"{number}-0" if number else FIRST_ID

    async def read(self, stream: str, after: str, count: int, block_ms: int) -> list[tuple[str, bytes]]:
        state = self._stream(stream)
        after_number = int(after.split("-", 1)[0])
        if state.next_number - 1 <= after_number and block_ms:
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            state.waiters.append(waiter)
            timer = loop.call_later(block_ms / 1000, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                if waiter in state.waiters:  # woken by the timer: nobody else removes it
                    state.waiters.remove(waiter)
        entries = state.entries
        if not entries or entries[-1][0] <= after_number:
            return []
        start = max(0, after_number + 1 - entries[0][0])
        out = []
        for index in range(start, min(len(entries), start + count)):
            number, data = entries[index]
            out.append((f"{number}-0", data))
        return out

    async def heartbeat(self, kind: str, name: str) -> None:
        self._registry[kind, name] = time.time()

    def sync_heartbeat(self, kind: str, name: str) -> None:
        return None  # one process: its loop renews the heartbeats (nothing else could see it die)

    async def live(self, kind: str, ttl: float) -> dict[str, float]:
        oldest = time.time() - ttl
        return {name: seen for (k, name), seen in self._registry.items() if k == kind and seen >= oldest}

    async def forget(self, kind: str, name: str) -> None:
        self._registry.pop((kind, name), None)

    async def put_reply(self, key: str, data: bytes, ttl: float) -> None:
        waiter = self._replies.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(data)

    async def take_reply(self, key: str, timeout: float) -> bytes | None:
        waiter = self._replies[key] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return None
        finally:
            self._replies.pop(key, None)

    async def put_snapshot(self, kind: str, name: str, data: bytes, ttl: float) -> None:
        self._snapshots[kind, name] = (time.time() + ttl, data)

    async def snapshots(self, kind: str) -> dict[str, bytes]:
        now = time.time()
        return {name: data for (k, name), (until, data) in self._snapshots.items() if k == kind and until > now}

    def id_time(self, entry_id: str) -> float | None:
        return None  # ids here are counters

    # Coordination (the Redis transport documents each)

    async def epoch(self) -> str:
        return "memory"

    async def ring_state(self) -> tuple[int, list[str]]:
        return self._ring

    async def propose_ring(self, generation: int, members: list[str], floor: int = 0) -> int | None:
        if self._ring[0] != generation:
            return None
        self._ring = (max(generation, floor) + 1, sorted(members))
        return self._ring[0]

    async def ack_generation(self, name: str, generation: int) -> None:
        self._generation_acks[name] = generation

    async def generation_acks(self) -> dict[str, int]:
        return dict(self._generation_acks)

    async def ack_barrier(self, server: str, name: str, token: str) -> None:
        self._barriers.setdefault(server, {})[name] = token

    async def barrier_acks(self, server: str) -> dict[str, str]:
        return dict(self._barriers.get(server, {}))

    async def load_sequences(self, topics: list[str]) -> dict[str, int]:
        return {topic: self._sequences[topic] for topic in topics if topic in self._sequences}

    async def load_cursor(self, server: str) -> str | None:
        return self._cursors.get(server)

    # Fencing: the same checks as the Redis scripts (pubsub/transport/redis_scripts.py)

    async def number(self, generation: int, numberings: list[Numbering], history_size: int, history_ttl: float):
        verdicts = {}
        for numbering in numberings:
            topic = numbering.topic
            fence = self._fences.get(topic)
            current = self._sequences.get(topic, 0)
            if fence is not None and fence > generation:
                verdicts[topic] = (FENCED, fence)
            elif 0 < numbering.first <= current:
                own = (current, self._last_numbered.get(topic)) == (numbering.last, (generation, numbering.last_origin))
                verdicts[topic] = (OK, 0) if own else (TAKEN, current)
            else:
                self._fences[topic] = max(generation, fence if fence is not None else generation)
                self._sequences[topic] = max(current, numbering.last)
                if numbering.first:
                    self._last_numbered[topic] = (generation, numbering.last_origin)
                if history_size:
                    self._keep(topic, numbering.kept, history_size, history_ttl)
                verdicts[topic] = (OK, 0)
        return verdicts

    async def deliver(self, server: str, generation: int, appends: list[tuple[str, bytes]], cursor: str | None):
        for stream, data in appends:
            self._append(stream, data)
        if cursor is None:
            return None
        if self._holders.get(server, generation) > generation:
            return False
        self._cursors[server] = cursor
        return True

    async def commit(self, server, generation, numberings, appends, cursor, history_size, history_ttl):
        return await commit_in_steps(self, server, generation, numberings, appends, cursor, history_size, history_ttl)

    async def claim_inbox(self, server: str, generation: int) -> str | None:
        self._holders[server] = max(generation, self._holders.get(server, generation))
        return self._cursors.get(server)

    async def claim_topics(self, topics: list[str], generation: int) -> dict[str, dict[str, int]]:
        for topic in topics:
            self._fences[topic] = max(generation, self._fences.get(topic, generation))
        return {topic: {origin: seq for seq, origin, _ in self._kept(topic)} for topic in topics}

    def _keep(self, topic: str, messages, size: int, ttl: float) -> None:
        now = time.monotonic()
        kept = self._histories.get(topic)
        if kept is None or kept[1] < now:
            kept = (deque(maxlen=size), now + ttl)
        kept[0].extend(messages)
        self._histories[topic] = (kept[0], now + ttl)
        epoch = self._history_epochs.get(topic)
        if epoch is not None:
            self._history_epochs[topic] = (epoch[0], now + ttl)

    def _kept(self, topic: str) -> list[tuple[int, str, bytes]]:
        kept = self._histories.get(topic)
        return [] if kept is None or kept[1] < time.monotonic() else list(kept[0])

    async def history_epochs(self, topics: list[str], ttl: float) -> dict[str, str]:
        now = time.monotonic()
        out = {}
        for topic in topics:
            epoch = self._history_epochs.get(topic)
            if epoch is None or epoch[1] < now:
                epoch = self._history_epochs[topic] = (new_epoch(), now + ttl)
                self._histories.pop(topic, None)
            out[topic] = epoch[0]
        return out

    async def history(self, topic: str) -> list[tuple[int, bytes]]:
        return [(seq, message) for seq, _, message in self._kept(topic)]

    async def close(self) -> None:
        self.__init__(self.maxlen)
