"""Clients that stop reading are cut off (4008) instead of buffered without bound; readers get everything.

A real daphne node; the stuck clients set a small receive buffer and never read,
so what the node sends them piles up in its own write buffer, as for a phone on
a dead network. The room then gets tens of MB.
"""

import asyncio
import json
import re
import socket
import time

import pytest
import websockets

from tests.processes import HOST

pytestmark = pytest.mark.processes

ROOM = "room:busy"
CAP = 1024 * 1024
PAYLOAD = "x" * 60_000  # under the 64 KiB frame limit
MESSAGES = 600  # about 36 MB into the room, per member
STUCK = 3
READERS = 3


def _rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.M).group(1))


async def join(ws, ref="1", room=ROOM):
    """Join room and wait for its ok reply (frames before it are skipped)."""
    await ws.send(json.dumps([ref, ref, room, "phx_join", {}]))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame[3] == "phx_reply" and frame[1] == ref:
            assert frame[4]["status"] == "ok", frame
            return


async def small_buffer_client(url, receive_buffer):
    """A websocket whose kernel receive buffer is kept small: big frames reach it in parts."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((HOST, int(url.split(":")[2].split("/")[0])))
    sock.setblocking(False)
    return await websockets.connect(url, sock=sock, max_queue=1, ping_interval=None, max_size=None)


async def _stuck_client(url):
    """Joins, then never reads again; the kernel buffers on its side are kept small."""
    ws = await small_buffer_client(url, 16 * 1024)
    await join(ws)
    return ws


async def _read_all(ws, count, latencies):
    got = 0
    async with asyncio.timeout(120):
        while got < count:
            frame = json.loads(await ws.recv())
            if frame[3] == "big":
                assert frame[4]["n"] == got, f"reader got message {frame[4]['n']} where {got} was due"
                latencies.append(time.time() - frame[4]["t"])
                got += 1
    return got


async def _close_codes_once_cut(node, stuck) -> list[int | None]:
    """Like phones whose network comes back: once the node has cut them off, the stuck clients read
    again and find what was already on its way, then the close frame (within the close handshake's
    timeout, after which the node drops the connection)."""
    deadline = time.monotonic() + 60
    while len(re.findall(r"with 4008: \d+ bytes unsent", node.output())) < len(stuck):
        assert time.monotonic() < deadline, f"stuck clients were not cut off:\n{node.output()[-3000:]}"
        await asyncio.sleep(0.02)

    async def read_to_the_end(ws):
        async with asyncio.timeout(30):
            try:
                while True:
                    await ws.recv()
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    return list(await asyncio.gather(*(read_to_the_end(ws) for ws in stuck)))


async def _busy_room(node, stuck_clients: int) -> dict:
    """Readers, stuck clients and a publisher on one node; the room gets MESSAGES big messages."""
    pid, url = node.process.pid, node.url()
    readers = [await websockets.connect(url, max_size=None, ping_interval=None) for _ in range(READERS)]
    for ws in readers:
        await join(ws)
    stuck = [await _stuck_client(url) for _ in range(stuck_clients)]
    publisher = await websockets.connect(url, max_size=None, ping_interval=None)
    await join(publisher, "p")
    baseline = _rss_kib(pid, "VmRSS")
    latencies = []
    reading = [asyncio.ensure_future(_read_all(ws, MESSAGES, latencies)) for ws in [*readers, publisher]]
    closes = asyncio.ensure_future(_close_codes_once_cut(node, stuck))
    started = time.monotonic()
    for n in range(MESSAGES):
        message = {"n": n, "t": time.time(), "pad": PAYLOAD}
        await publisher.send(json.dumps(["p", str(n), ROOM, "publish", ["big", message]]))
        if n % 50 == 49:
            await asyncio.sleep(0.05)  # a busy room, not one burst
    assert await asyncio.gather(*reading) == [MESSAGES] * (READERS + 1), "a reading member missed messages"
    elapsed = time.monotonic() - started
    growth = _rss_kib(pid, "VmHWM") - baseline
    codes = await closes
    for ws in [*readers, *stuck, publisher]:
        await ws.close()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    return {"elapsed": elapsed, "growth_kib": growth, "codes": codes, "p99_ms": p99 * 1000}


async def test_stuck_clients_are_cut_off_and_readers_get_everything(daphne_factory):
    """The same busy room twice, side by side: without and with stuck clients. What the stuck
    clients add to the node's peak memory must stay near their caps, not their share of the room."""
    settings = {"DPS_PUBLISH_RATE": "0", "DPS_MAX_SEND_BUFFER": str(CAP)}  # one publisher stands for a room
    without = await _busy_room(daphne_factory(**settings), 0)
    node = daphne_factory(**settings)
    with_stuck = await _busy_room(node, STUCK)
    added_mb = (with_stuck["growth_kib"] - without["growth_kib"]) / 1024
    room_mb = MESSAGES * len(PAYLOAD) / 1e6
    print(
        f"\nslow readers: {room_mb:.0f} MB into the room in {with_stuck['elapsed']:.1f}s; {STUCK} stuck clients "
        f"cut off (close codes they read: {with_stuck['codes']}); node peak RSS grew "
        f"{without['growth_kib'] / 1024:.0f} MB without them and {with_stuck['growth_kib'] / 1024:.0f} MB with them "
        f"({added_mb:+.0f} MB; unbounded they would hold {STUCK * room_mb:.0f} MB); the readers' p99 "
        f"{without['p99_ms']:.0f} ms without them, {with_stuck['p99_ms']:.0f} ms with them"
    )
    # A stuck client that reads again within the close handshake's timeout (1 s) finds 4008; one
    # slower than that (a loaded machine) finds the connection dropped.
    assert all(code in (4008, None) for code in with_stuck["codes"]), with_stuck["codes"]
    # About 2 caps each may be buffered before the cut; the margin is the allocator's noise.
    assert added_mb < STUCK * 3 * CAP / 2**20 + 16, f"the stuck clients cost the node {added_mb:.0f} MB"
    # The reading members keep their latency (a margin for this shared machine's noise).
    assert with_stuck["p99_ms"] < without["p99_ms"] + 250, (without["p99_ms"], with_stuck["p99_ms"])
