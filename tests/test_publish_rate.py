"""The publish rate limit judges the client, not the server: a client within DPS_PUBLISH_RATE /
DPS_PUBLISH_BURST is never refused because the node fell behind (here: Redis frozen), and a client
that really sends faster is still refused."""

import asyncio
import functools
import json
import os
import signal
import time
import types

import pytest
import websockets

from pubsub.socket import inbound
from pubsub.socket.throttle import TokenBucket
from tests.conftest import Cluster

RATE, BURST = 50, 30  # the limit the node enforces
CALM_RATE = 40  # publishes a second of the client that stays within it
FREEZE = 3.0  # seconds Redis is stopped: 120 calm publishes queue up, four times the burst
FLOOD = 300  # publishes sent at once, while Redis is frozen
HOG = 200  # publishes of PADDING characters each (12 MB) sent as fast as they go while Redis is frozen
PADDING = 60_000  # under DPS_MAX_FRAME_BYTES (65536): the node queues it 4 frames deep at most


async def _joined(url: str, topic: str):
    ws = await websockets.connect(url)
    await ws.send(json.dumps(["1", "j", topic, "phx_join", {}]))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply[4]["status"] == "ok", reply
    return ws


def _publish(ref: str, topic: str, padding: str = "") -> str:
    return json.dumps(["1", ref, topic, "publish", ["chat", {"ref": ref, "pad": padding}]])


def _rss(pid: int) -> int:
    """Resident bytes of a process (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


async def _replies(ws, expected: int, into: dict, got_some: asyncio.Event | None = None, some: int = 0) -> None:
    """Collect the phx_reply of each publish (by ref) until expected have come."""
    while len(into) < expected:
        frame = json.loads(await ws.recv())
        if frame[3] == "phx_reply" and frame[1] != "j":
            into[frame[1]] = frame[4]
            if got_some is not None and len(into) >= some:
                got_some.set()


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


async def _handle_reply(protocol, message):
    pass


def _daphne_like_send(queue: asyncio.Queue):
    """What daphne gives an application as send: partial(handle_reply, protocol); the protocol
    holds the connection's application_queue (and its Twisted transport: none here)."""
    protocol = types.SimpleNamespace(application_queue=queue, transport=None)
    return functools.partial(_handle_reply, protocol)


async def test_daphnes_queue_stamps_each_frame_and_a_real_stall_of_the_loop_puts_it_in_doubt():
    queue = asyncio.Queue()
    assert inbound.stamp_arrivals(_daphne_like_send(queue), max_frame=1000)
    assert type(queue) is inbound.ArrivalQueue and inbound.stamp_arrivals(_daphne_like_send(queue), 1000)
    assert not inbound.stamp_arrivals(_handle_reply, 1000)  # not daphne: nothing to stamp
    before = time.monotonic()
    arrived, since = inbound.arrival(_received(queue, "x" * 10))
    assert before <= arrived <= time.monotonic() and since <= arrived
    assert queue._dps_queued == 0  # what was taken is no longer counted as waiting
    assert inbound.arrival({"type": "websocket.receive", "text": "[]"}) == (None, None)

    stalled_at = time.monotonic()
    time.sleep(2 * inbound.STALL)  # the event loop stalls: frames read now may have come meanwhile
    arrived, since = inbound.arrival(_received(queue))
    assert since <= stalled_at < arrived
    async with asyncio.timeout(5):  # and the watch notes the stall at its next tick
        while inbound._watch.stall[1] < arrived:
            await asyncio.sleep(inbound.TICK / 4)
    assert inbound._watch.stall[0] <= stalled_at


def _received(queue: asyncio.Queue, text: str = "[]") -> dict:
    """A frame daphne queues, as the consumer takes it."""
    queue.put_nowait({"type": "websocket.receive", "text": text})
    return queue.get_nowait()


# (seen, stall, now) -> the earliest a frame read at now may have come
WATCH_CASES = {
    "the loop turns": (10.0, (0.0, 0.0), 10.1, 10.1),
    "in a stall: since the loop last turned": (10.0, (0.0, 0.0), 10.5, 10.0),
    "just after a stall": (12.05, (10.0, 12.0), 12.1, 10.0),
    "as long again after it": (14.0, (10.0, 12.0), 14.0, 10.0),
    "later: no doubt": (14.0, (10.0, 12.0), 14.1, 14.1),
}


@pytest.mark.parametrize("seen, stall, now, since", WATCH_CASES.values(), ids=WATCH_CASES.keys())
def test_the_loop_watch_says_since_when_a_frame_may_have_waited(seen, stall, now, since):
    watch = inbound.LoopWatch()
    watch.seen, watch.stall = seen, stall
    assert watch.waiting_since(now) == since


class _Transport:
    """Records what the queue asks of Twisted's transport (its producer half: stop and resume reading)."""

    def __init__(self):
        self.calls = []

    def pauseProducing(self):  # noqa: N802 - Twisted's name
        self.calls.append("pause")

    def resumeProducing(self):  # noqa: N802
        self.calls.append("resume")


async def test_a_socket_with_too_much_waiting_is_not_read_until_half_is_taken():
    queue, transport = asyncio.Queue(), _Transport()
    send = _daphne_like_send(queue)
    send.args[0].transport = transport
    assert inbound.stamp_arrivals(send, max_frame=10)  # pauses over 4 x 10 characters waiting
    for _ in range(4):
        queue.put_nowait({"type": "websocket.receive", "text": "x" * 10})
    assert transport.calls == [] and not queue.paused
    queue.put_nowait({"type": "websocket.receive", "text": "x" * 10})  # 50 characters wait
    assert transport.calls == ["pause"] and queue.paused
    paused_at = queue._dps_from
    for _ in range(2):
        queue.get_nowait()
    assert transport.calls == ["pause"]  # 30 wait still
    queue.get_nowait()
    assert transport.calls == ["pause", "resume"] and not queue.paused  # 20: half
    queue.get_nowait(), queue.get_nowait()
    # What is read next may have waited in the kernel since the pause,
    arrived, since = inbound.arrival(_received(queue))
    assert since <= paused_at < arrived  # (earlier still if the loop stalled meanwhile)
    # and paused again meanwhile, since the first pause.
    for _ in range(5):
        queue.put_nowait({"type": "websocket.receive", "text": "x" * 10})
    assert transport.calls == ["pause", "resume", "pause"] and queue._dps_from == paused_at
    while not queue.empty():
        queue.get_nowait()
    assert transport.calls[-1] == "resume" and queue._dps_queued == 0


@pytest.mark.processes
async def test_a_client_within_the_rate_is_not_refused_while_redis_is_frozen_and_flooders_are_refused_and_held_back():
    cluster = Cluster(
        topic_servers=("ts-1",), nodes=("ws-a",), DPS_PUBLISH_RATE=str(RATE), DPS_PUBLISH_BURST=str(BURST)
    )
    redis_pid = cluster.redis.process.pid
    frozen = False
    try:
        url = cluster.nodes["ws-a"].url()
        calm, flooder, hog = [await _joined(url, f"room:{name}") for name in ("calm", "flood", "hog")]
        node_pid = cluster.nodes["ws-a"].process.pid
        total = int(CALM_RATE * (FREEZE + 1))
        calm_replies: dict = {}
        flood_replies: dict = {}
        hog_replies: dict = {}
        hog_sent = 0
        warmed_up = asyncio.Event()
        sent_while_frozen = 0

        async def send_calmly():
            nonlocal sent_while_frozen
            for n in range(total):  # never faster than CALM_RATE (spaced, never catching up)
                await calm.send(_publish(f"c{n}", "room:calm"))
                sent_while_frozen += frozen
                await asyncio.sleep(1 / CALM_RATE)

        async def hog_the_socket():
            nonlocal hog_sent
            padding = "x" * PADDING
            for n in range(HOG):  # as fast as the node takes them: it stops reading, TCP holds the rest
                await hog.send(_publish(f"h{n}", "room:hog", padding))
                hog_sent += 1

        async with asyncio.timeout(60):
            collecting = asyncio.ensure_future(_replies(calm, total, calm_replies, warmed_up, 10))
            sending = asyncio.ensure_future(send_calmly())
            await warmed_up.wait()  # Redis answers: the publishes are being stored
            rss_before = _rss(node_pid)
            os.kill(redis_pid, signal.SIGSTOP)
            frozen = True
            stopped_at = time.monotonic()
            hogging = asyncio.ensure_future(hog_the_socket())
            await asyncio.sleep(FREEZE / 3)
            started = time.monotonic()
            await asyncio.gather(*(flooder.send(_publish(f"f{n}", "room:flood")) for n in range(FLOOD)))
            flood_took = time.monotonic() - started
            await asyncio.sleep(max(0.0, stopped_at + FREEZE - time.monotonic()))
            rss_growth, hogged = _rss(node_pid) - rss_before, hog_sent
            os.kill(redis_pid, signal.SIGCONT)
            frozen = False
            await _replies(flooder, FLOOD, flood_replies)
            await _replies(hog, HOG, hog_replies)
            await asyncio.gather(sending, collecting, hogging)

        assert sent_while_frozen > 2 * BURST, f"only {sent_while_frozen} publishes queued behind frozen Redis"
        refused = {ref: reply for ref, reply in calm_replies.items() if reply["status"] != "ok"}
        assert not [r for r in refused.values() if r["response"].get("reason") == "rate limited"], (
            f"{len(refused)} of {total} calm publishes refused: {sorted(refused.items())[:5]}"
        )
        assert all(r == {"status": "error", "response": {"reason": "unavailable"}} for r in refused.values()), refused
        flood_ok = sum(reply["status"] == "ok" for reply in flood_replies.values())
        assert all(
            r == {"status": "error", "response": {"reason": "rate limited"}}
            for r in flood_replies.values()
            if r["status"] != "ok"
        ), flood_replies
        # The burst, and what the rate refills while the flood arrives (a second of slack for a busy node).
        assert BURST <= flood_ok <= BURST + RATE * (flood_took + 1), f"{flood_ok} of a flood of {FLOOD} accepted"
        # A client that floods a node whose consumer is blocked makes it hold a few frames, not the flood.
        assert rss_growth < 4 * 2**20, f"the node grew by {rss_growth >> 20} MiB while {hogged} padded frames were sent"
        assert all(r["status"] == "ok" or r["response"] == {"reason": "rate limited"} for r in hog_replies.values())
        for ws in (calm, flooder, hog):
            await ws.close()
    finally:
        if frozen:
            os.kill(redis_pid, signal.SIGCONT)
        cluster.stop()
