"""Messages per second from a growing counter, measured between two reports."""

import time

__all__ = ["RateMeter"]


class RateMeter:
    """Remembers the last (time, count) it saw; per_second() is the rate since then."""

    def __init__(self):
        self._last: tuple[float, int] | None = None

    def per_second(self, count: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        last, self._last = self._last, (now, count)
        if last is None or now <= last[0]:
            return 0.0
        return (count - last[1]) / (now - last[0])
