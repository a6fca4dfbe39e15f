"""The publish rate limit judges the client, not the server."""

import pytest

from pubsub.throttle import TokenBucket

# The limit's logic. Rates are powers of two, so every time below is exact in binary.
BUCKET_CASES = {
    "the burst, then one token per interval": (2, 3, [(0, None)] * 4 + [(0.49, None), (0.5, None)], "TTTFFT"),
    "never more than the burst saved up": (2, 3, [(100, None)] * 10, "TTTFFFFFFF"),
    "refused frames spend nothing": (8, 1, [(0, None), (0, None), (0.0625, None), (0.125, None)], "TFFT"),
    "a client at the rate, judged by when each frame came": (8, 2, [(n / 8, None) for n in range(41)], "T" * 41),
    # ... and the same 41 frames judged when a consumer blocked for 5 s got to them (the old bug):
    "the same frames, all judged at 5 s": (8, 2, [(5, None)] * 41, "TT" + "F" * 39),
    # Read at 3 s after the node stopped reading at 0 s: the 24 a client at the rate sent meanwhile pass,
    "a backlog read after a stall, at the rate": (8, 2, [(3, 0)] * 24, "T" * 24),
    # and a flood gets the burst and the rate over the stall, no more.
    "a flood read after a stall": (8, 2, [(3, 0)] * 40, "T" * 26 + "F" * 14),
    # A stall credits its own length, not the idle time before it.
    "idle, then a half-second stall": (8, 2, [(0, None)] + [(100, 99.5)] * 10, "T" + "T" * 6 + "F" * 4),
    "since after now counts as now": (8, 1, [(0, 5), (0.125, None)], "TT"),
}


@pytest.mark.parametrize("rate, burst, frames, admitted", BUCKET_CASES.values(), ids=BUCKET_CASES.keys())
def test_the_bucket_judges_each_frame_by_when_it_came(rate, burst, frames, admitted):
    bucket = TokenBucket(rate, burst, now=0.0)
    got = "".join("T" if bucket.take(now, since) else "F" for now, since in frames)
    assert got == admitted


def test_a_bucket_needs_a_rate():
    with pytest.raises(ValueError, match="rate must be positive"):
        TokenBucket(0, 10)
