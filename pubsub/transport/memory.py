"""The in-memory transport: streams as bounded deques in this process (the embedded default)."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from pubsub.transport.base import FIRST_ID

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

    async def live(self, kind: str, ttl: float) -> dict[str, float]:
        oldest = time.time() - ttl
        return {name: seen for (k, name), seen in self._registry.items() if k == kind and seen >= oldest}

    async def forget(self, kind: str, name: str) -> None:
        self._registry.pop((kind, name), None)

    async def put_snapshot(self, kind: str, name: str, data: bytes, ttl: float) -> None:
        self._snapshots[kind, name] = (time.time() + ttl, data)

    async def snapshots(self, kind: str) -> dict[str, bytes]:
        now = time.time()
        return {name: data for (k, name), (until, data) in self._snapshots.items() if k == kind and until > now}

    def id_time(self, entry_id: str) -> float | None:
        return None  # ids here are counters

    async def close(self) -> None:
        self._streams.clear()
        self._registry.clear()
        self._snapshots.clear()
