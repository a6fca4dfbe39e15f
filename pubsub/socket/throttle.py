"""How often one socket may publish: a token bucket, judged by when each frame reached the node.

The bucket is kept in its "theoretical arrival time" form (GCRA, as ATM cells were policed):
one float per socket, ``due``, the time at which the bucket would be full again. A frame
arriving at ``now`` is admitted when ``now >= due - (burst - 1) / rate``, and then
``due = max(due, now) + 1 / rate``. That is the token bucket with
``rate`` tokens a second holding ``burst``, exactly, whatever the arrival times.

The arrival time is the client's, not the consumer's: the consumer may reach a frame seconds
after it came (pubsub/socket/inbound.py), and judging it then counts the node's backlog against the
client. When the node could not tell exactly when a frame came (it was not reading: its event
loop stalled, or this socket's reads were paused), the frame may have come any time from
``since`` on. It is admitted if it conforms at ``now`` (the latest it can have come), and it
spends its token from ``since`` on (the earliest), so the time the node was not reading is
not lost to the bucket's cap. A client is still never admitted more than ``burst`` plus
``rate`` times the time since ``since``: what any client within the limit could have sent.
"""

from __future__ import annotations

import time

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; take() spends one if there is one.

    A chat client that sends a burst of messages (a paste, a reconnect flushing
    its buffer) gets through; one that publishes faster than ``rate`` for long
    is refused until it slows down.
    """

    __slots__ = ("rate", "burst", "due")  # rate and burst are the settings' objects: one float per socket

    def __init__(self, rate: float, burst: int, now: float | None = None):
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate!r}")
        self.rate = rate
        self.burst = burst if burst >= 1 else 1
        self.due = time.monotonic() if now is None else now  # full from the start

    def take(self, now: float | None = None, since: float | None = None) -> bool:
        """Spend a token for a frame that arrived at now (default: the present), or some time
        between since and now; False, and nothing spent, if the bucket is empty at now."""
        now = time.monotonic() if now is None else now
        due, interval = self.due, 1.0 / self.rate
        if now < due - (self.burst - 1) * interval:
            return False
        earliest = now if since is None or since > now else since
        self.due = (due if due > earliest else earliest) + interval
        return True
