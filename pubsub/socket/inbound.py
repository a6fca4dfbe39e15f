"""A socket's inbound frames on daphne: when each reached the node, and how much of it may wait.

daphne reads a websocket as fast as frames come and puts each into the application's queue
(one asyncio.Queue per connection); the consumer takes them one at a time and awaits each (a
publish awaits its append to Redis). While one waits (Redis stalled, a long join), the
others queue up, and a rate limit judged when the consumer reached them saw a client that
kept to the rate send the whole backlog at once: Redis frozen for 8 s cost a client at
50/s 201 of its 950 publishes as "rate limited".

So each frame carries the time daphne queued it (``ARRIVED``), which the limit judges
(pubsub/socket/throttle.py). While the node does not read the socket at all, frames wait in the
kernel with no time on them, and are given the benefit of the doubt: ``SINCE``, the
earliest they may have come, is when the node stopped reading, for frames read within as
long again after it resumed (a second at least, after a pause of one socket). The node
stops reading when its event loop stalls (a ticker notices it did not turn for ``STALL``)
and when too much of one socket waits: over ``QUEUED_FRAMES`` times DPS_MAX_FRAME_BYTES
characters queued, its reads pause until the consumer has taken half of them (paused again
before what waited is read, the doubt goes back to the first pause). That bounds what a
client can make a node hold while its consumer is blocked: a flood during a Redis stall
used to queue as fast as the client could send (23 MiB in 2 s); the rest now waits in the
kernel's receive buffer, then in the client. A socket that stays paused past daphne's ping
interval and timeout (20 + 30 s) is dropped by autobahn, as a client whose pongs do not
come would be.

The queue stays daphne's own object; it is given this subclass, which adds no object per
socket (its few fields fit the queue's existing attribute table).
"""

from __future__ import annotations

import asyncio
import math
import time

__all__ = ["ARRIVED", "SINCE", "ArrivalQueue", "LoopWatch", "arrival", "stamp_arrivals"]

ARRIVED = "dps.arrived"  # time.monotonic() when daphne queued the frame
SINCE = "dps.since"  # only when earlier: the earliest the frame may have reached the node

QUEUED_FRAMES = 4  # reads pause while more characters wait than this many frames of the largest size
TICK = 0.1  # how often the loop watch notes that the event loop turns
STALL = 0.25  # a loop that has not turned for this long was not reading its sockets
AFTER_PAUSE = 1.0  # frames read this long at least after a socket's reads resume may be old


class LoopWatch:
    """When this process's event loop last turned, and its last stall (one per process)."""

    def __init__(self):
        self.seen = time.monotonic()
        self.stall = (0.0, 0.0)  # (from, to) of the last stall
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tick on loop (again, if the process moved to another loop)."""
        if self._loop is loop and not loop.is_closed():
            return
        self._loop = loop
        self.seen, self.stall = time.monotonic(), (0.0, 0.0)
        loop.call_later(TICK, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return  # a loop the watch left
        now = time.monotonic()
        if now - self.seen > STALL:
            self.stall = (self.seen, now)
        self.seen = now
        loop.call_later(TICK, self._tick, loop)

    def waiting_since(self, now: float) -> float:
        """The earliest a frame read at now may have reached the node: now, unless the loop is
        in a stall (the sockets' reads run before the loop's timers) or has just come out of one."""
        if now - self.seen > STALL:
            return self.seen
        start, end = self.stall
        return start if now <= end + (end - start) else now


_watch = LoopWatch()


class ArrivalQueue(asyncio.Queue):
    """daphne's per-connection queue, stamping each frame as it is put and pausing the socket's
    reads while more than ``QUEUED_FRAMES`` frames of ``_dps_frame`` characters wait."""

    # Set by stamp_arrivals on daphne's instance (class defaults: a queue never adopted).
    _dps_transport = None
    _dps_frame = 0  # the largest frame (DPS_MAX_FRAME_BYTES: the setting's own int, shared)
    _dps_queued = 0  # characters of stamped frames in the queue
    _dps_from = 0.0  # reads paused at (kept while frames read after the pause may be old)
    _dps_until = 0.0  # frames read up to then may have waited since _dps_from; inf: paused

    def put_nowait(self, item):
        if item.get("type") == "websocket.receive":
            now = time.monotonic()
            item[ARRIVED] = now
            since = _watch.waiting_since(now)
            if now <= self._dps_until and self._dps_from < since:
                since = self._dps_from
            if since < now:
                item[SINCE] = since
            self._dps_queued += _size(item)
            if self._dps_queued > QUEUED_FRAMES * self._dps_frame and self._dps_until != math.inf:
                self._pause(now)
        super().put_nowait(item)

    def get_nowait(self):
        item = super().get_nowait()
        if ARRIVED in item:
            self._dps_queued -= _size(item)
            if self._dps_until == math.inf and self._dps_queued <= QUEUED_FRAMES * self._dps_frame // 2:
                self._resume(time.monotonic())
        return item

    def _pause(self, now: float) -> None:
        pause = getattr(self._dps_transport, "pauseProducing", None)
        if pause is None:
            return
        pause()  # frames already read are queued still; Twisted reads no more of the socket
        if now > self._dps_until:  # (paused again while reading what waited: it waited since the first)
            self._dps_from = now
        self._dps_until = math.inf

    def _resume(self, now: float) -> None:
        self._dps_until = now + max(now - self._dps_from, AFTER_PAUSE)
        resume = getattr(self._dps_transport, "resumeProducing", None)
        if resume is not None:
            resume()

    @property
    def paused(self) -> bool:
        return self._dps_until == math.inf


def _size(item: dict) -> int:
    return len(item.get("text") or item.get("bytes") or ())


def stamp_arrivals(send, max_frame: int) -> bool:
    """Stamp the frames of the daphne connection behind an ASGI send, and pause its reads while
    over QUEUED_FRAMES frames of max_frame characters wait. False (and nothing done) where the
    server is not daphne."""
    args = getattr(send, "args", ())
    protocol = args[0] if args else None
    queue = getattr(protocol, "application_queue", None)
    if type(queue) is not asyncio.Queue:  # not daphne's (or stamped already)
        return type(queue) is ArrivalQueue
    _watch.start(asyncio.get_running_loop())
    queue.__class__ = ArrivalQueue
    queue._dps_transport = getattr(protocol, "transport", None)
    queue._dps_frame = max_frame if max_frame >= 1 else 1
    return True


def arrival(message: dict) -> tuple[float | None, float | None]:
    """(arrived, since) of a websocket.receive message: when it reached the node and the
    earliest it may have; (None, None) if it carries no stamp (not on daphne)."""
    arrived = message.get(ARRIVED)
    return arrived, message.get(SINCE, arrived)
