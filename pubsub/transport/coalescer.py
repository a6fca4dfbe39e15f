"""Concurrent appends of one process, coalesced into pipelines.

A chat node appends for hundreds of sockets at once (a room re-joining after a
deploy, every member publishing). One command per append on a pool of
connections turned that into "Too many connections" refusals; one round trip
per append wastes Redis' time. Here, while one pipeline is in flight, new
appends queue and go out together in the next one: under load the batches grow
and the round trips per append fall; idle, an append goes out at once.

Order: entries leave in the order append() was called (one pipeline in flight at
a time), so per-stream order is the callers' order. Each caller awaits the
outcome of its own entry's pipeline.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

__all__ = ["AppendCoalescer"]

Flush = Callable[[list[tuple[str, bytes]]], Awaitable[None]]


class AppendCoalescer:
    """Queue appends while a pipeline is in flight; send them together in the next one."""

    def __init__(self, flush: Flush, max_batch: int = 2048):
        self._flush = flush
        self.max_batch = max_batch
        self._queue: deque[tuple[str, bytes, asyncio.Future]] = deque()
        self._sender: asyncio.Task | None = None
        self.pipelines = 0  # round trips made, for measuring what coalescing saves
        self.appends = 0

    async def append(self, stream: str, data: bytes) -> None:
        """Append one entry; returns once the pipeline that carried it succeeded (or raises its error)."""
        await self.append_many([(stream, data)])

    async def append_many(self, items: list[tuple[str, bytes]]) -> None:
        """Append entries in order; they travel in one pipeline (or consecutive ones, if very many)."""
        if not items:
            return
        done = asyncio.get_running_loop().create_future()
        for stream, data in items[:-1]:
            self._queue.append((stream, data, None))
        self._queue.append((items[-1][0], items[-1][1], done))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_queued(), name="dps-append-coalescer")
        # A caller that is cancelled does not cancel the pipeline its entry travels in.
        await asyncio.shield(done)

    async def _send_queued(self) -> None:
        while self._queue:
            batch, waiters, mid_group = [], [], False
            # One append_many's entries (the last carries the waiter) never straddle two pipelines.
            while self._queue and (len(batch) < self.max_batch or mid_group):
                stream, data, waiter = self._queue.popleft()
                batch.append((stream, data))
                mid_group = waiter is None
                if waiter is not None:
                    waiters.append(waiter)
            try:
                await self._flush(batch)
            except Exception as exc:
                outcome = exc
            else:
                outcome = None
            self.pipelines += 1
            self.appends += len(batch)
            for waiter in waiters:
                if waiter.done():
                    continue
                if outcome is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(outcome)
                    waiter.add_done_callback(_retrieved)  # its caller may have been cancelled meanwhile

    async def close(self) -> None:
        """Let the pipeline in flight finish (callers are waiting on it)."""
        if self._sender is not None and not self._sender.done():
            await asyncio.wait([self._sender], timeout=5)


def _retrieved(future: asyncio.Future) -> None:
    future.exception()
