"""Hundreds of sockets doing random things and leaving in random ways: the node ends with nothing held.

Each socket takes a random path (the Phoenix endpoint, an unknown path, a wrong
vsn), sends random frames (valid joins and publishes, garbage, binary, frames
over the limits) and leaves at a random moment: a clean close, an abort, or an
abort right after a request, so the reply goes to a socket that is gone.
Some sockets are identified (tracked in presence), and joins may ask for recovery (well formed or
not) or for presence. Afterwards the node must hold zero connections and zero channels, nobody
may be left present in any topic, and the node must have logged no exception.
"""

import asyncio
import json
import random
import time
import urllib.request

import pytest
import websockets

pytestmark = pytest.mark.processes

SOCKETS = 600
AT_ONCE = 50
TOPICS = [f"fuzz:{i}" for i in range(5)]


def _gauges(node) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.port}/metrics", timeout=10).read().decode()
    return {
        name: float(value)
        for line in text.splitlines()
        if line.startswith(("dps_node_connections ", "dps_node_channels "))
        for name, value in [line.split()]
    }


def _present(node, topic: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.port}/api/presence_stats",
        data=json.dumps({"topic": topic}).encode(),
        headers={"X-API-Key": "fuzz"},
    )
    return json.loads(urllib.request.urlopen(request, timeout=10).read())["result"]["num_clients"]


def _random_frame(rng: random.Random):
    topic = rng.choice(TOPICS)
    ref = str(rng.randrange(100))
    return rng.choice(
        [
            json.dumps([ref, ref, topic, "phx_join", {}]),
            json.dumps([ref, ref, topic, "phx_join", {"recover": True, "presence": True}]),
            json.dumps([ref, ref, topic, "phx_join", {"recover": {"epoch": "e0", "seq": rng.randrange(5)}}]),
            json.dumps([ref, ref, topic, "phx_join", {"recover": {"epoch": 1, "seq": "x"}}]),
            json.dumps([ref, ref, topic, "phx_join", {"recover": {"epoch": "e0", "seq": 2**70}}]),
            json.dumps([ref, ref, topic, "publish", ["chat", {"n": ref}]]),
            json.dumps([ref, ref, topic, "publish", "not a list"]),
            json.dumps([None, ref, "phoenix", "heartbeat", {}]),
            json.dumps([ref, ref, topic, "phx_leave", {}]),
            json.dumps([ref, ref, topic, "nonsense", {}]),
            "not json at all",
            json.dumps({"an": "object"}),
            json.dumps([1, 2]),
            b"\x00binary",
            json.dumps([ref, ref, topic, "publish", ["chat", {"pad": "x" * 70_000}]]),
            "x" * (1024 * 1024 + 10),  # over daphne's own message limit
        ]
    )


async def _one_socket(node, rng: random.Random, stats: dict) -> None:
    path = rng.choices(["good", "nope", "vsn", "v1"], weights=[80, 10, 5, 5])[0]
    user = f"vsn=2.0.0&user=u{rng.randrange(20)}" if rng.random() < 0.5 else "vsn=2.0.0"
    urls = {"good": node.url(user), "nope": f"ws://127.0.0.1:{node.port}/nope", "vsn": node.url("vsn=9.0.0")}
    url = urls.get(path) or node.url(f"vsn=1.0.0&user=u{rng.randrange(20)}")  # V1: V2 frames close it
    try:
        ws = await websockets.connect(url, open_timeout=30, max_size=None, ping_interval=None)
    except websockets.InvalidStatus:
        stats["refused"] += 1
        return
    try:
        for _ in range(rng.randrange(8)):
            await ws.send(_random_frame(rng))
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.05)
        ending = rng.choice(["close", "abort", "abort"])
        if ending == "close":
            await ws.close()
        else:
            ws.transport.abort()  # gone without a close frame, often with replies on their way
        stats[ending] += 1
    except websockets.ConnectionClosed:
        stats["closed by the node"] += 1


async def test_random_sockets_leave_nothing_behind(daphne_factory):
    node = daphne_factory(DPS_SOCKET_AUTH="tests.channel_examples.plan_hook", DPS_API_KEY="fuzz")
    rng = random.Random(20261201)
    stats = {"refused": 0, "close": 0, "abort": 0, "closed by the node": 0}
    for _ in range(0, SOCKETS, AT_ONCE):
        seeds = [rng.randrange(2**32) for _seed in range(AT_ONCE)]
        await asyncio.gather(*(_one_socket(node, random.Random(seed), stats) for seed in seeds))
    deadline = time.monotonic() + 30
    while (gauges := _gauges(node)) != {"dps_node_connections": 0.0, "dps_node_channels": 0.0}:
        assert time.monotonic() < deadline, f"after {SOCKETS} sockets and all gone, the node still holds {gauges}"
        await asyncio.sleep(0.1)
    while present := {t: n for t in TOPICS if (n := _present(node, t))}:
        assert time.monotonic() < deadline, f"after every socket left, still present: {present}"
        await asyncio.sleep(0.1)
    output = node.output()
    print(f"\nfuzz: {SOCKETS} sockets {stats}; the node holds {gauges}")
    assert "Traceback" not in output and "Exception inside application" not in output, output[-5000:]
