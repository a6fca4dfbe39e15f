"""A local channel's bounded message queue.

One small object per channel with its own waiters: a delivery wakes only the
task receiving on that channel. (channels_redis makes every receive wait on one
shared asyncio.Lock, whose acquire scans all waiters: O(n) per message per
process, see docs/architecture.md "Pitfalls".)
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Mailbox"]


class Mailbox:
    """put() never blocks: a full mailbox refuses the message and the caller counts the drop."""

    __slots__ = ("messages", "capacity", "waiters", "idle_since")

    def __init__(self, capacity: int):
        self.messages: deque = deque()
        self.capacity = capacity
        self.waiters: deque[asyncio.Future] = deque()
        self.idle_since: float | None = None

    def put(self, message) -> bool:
        """Queue message for the next receive(); False if the mailbox is full."""
        if len(self.messages) >= self.capacity:
            return False
        self.messages.append(message)
        self._wake_next()
        return True

    async def get(self):
        """The oldest message, waiting for one if needed."""
        while not self.messages:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # A message may have been handed to us as we were cancelled: pass the wake-up on.
                if waiter.done() and not waiter.cancelled() and self.messages:
                    self._wake_next()
                elif waiter in self.waiters:  # else the channel would look received on forever
                    self.waiters.remove(waiter)
                raise
        return self.messages.popleft()

    def _wake_next(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def __len__(self) -> int:
        return len(self.messages)
