"""Recovery across real processes: the phoenix client with a params function, a kill -9 of the
topic's owner while it is away (live ring), and the seed's example unchanged."""

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
import websockets

from pubsub.ring import HashRing
from tests import phoenix_js
from tests.conftest import Cluster
from tests.test_failover import wait_for_ring

pytestmark = [pytest.mark.processes, pytest.mark.node]

TTL = 2.0
TOPIC = "room:recovery"


@pytest.fixture
def cluster():
    started = Cluster(topic_servers=("ts-1", "ts-2"), DPS_LIVENESS_TTL=str(TTL), DPS_PUBLISH_RATE="0")
    wait_for_ring(started, ["ts-1", "ts-2"], timeout=6 * TTL)
    yield started
    started.stop()


class JsClient:
    def __init__(self, process):
        self.process = process
        self.events = []

    async def next(self, kind, timeout=15):
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
            assert line, f"the phoenix client exited after {self.events}"
            event = json.loads(line)
            self.events.append(event)
            if event["event"] == kind:
                return event

    async def say(self, line):
        self.process.stdin.write(f"{line}\n".encode())
        await self.process.stdin.drain()


async def _publish(ws, numbers):
    for n in numbers:
        await ws.send(json.dumps(["1", f"p{n}", TOPIC, "publish", ["event", {"n": n}]]))
    seen = 0
    while seen < len(numbers):  # every publish acknowledged (accepted by the owner's stream)
        frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
        if frame[3] == "phx_reply":
            assert frame[4]["status"] == "ok", frame
            seen += 1


@pytest.mark.parametrize("kill_owner", [False, True], ids=["steady", "owner-killed"])
async def test_the_phoenix_client_recovers_what_it_missed(cluster, kill_owner):
    modules = phoenix_js.install()
    process = await asyncio.create_subprocess_exec(
        "node",
        str(Path(__file__).parent / "js" / "phoenix_recovery.js"),
        f"ws://127.0.0.1:{cluster.nodes['ws-b'].port}/socket",
        TOPIC,
        env={**os.environ, "NODE_PATH": str(modules)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    js = JsClient(process)
    try:
        joined = await js.next("joined")
        assert joined["response"]["recovered"] is False
        async with websockets.connect(cluster.nodes["ws-a"].url()) as publisher:
            await publisher.send(json.dumps(["1", "1", TOPIC, "phx_join", {}]))
            await asyncio.wait_for(publisher.recv(), 10)
            await _publish(publisher, range(5))
            for _ in range(5):
                await js.next("event")
            await js.say("disconnect")
            await js.next("disconnected")
            if kill_owner:
                owner = HashRing(["ts-1", "ts-2"]).owner(TOPIC)
                cluster.topic_servers[owner].stop(signal.SIGKILL)
                wait_for_ring(cluster, [name for name in ("ts-1", "ts-2") if name != owner], timeout=6 * TTL)
            await _publish(publisher, range(5, 25))  # missed while away
            await js.say("connect")
            rejoined = await js.next("joined")
            assert rejoined["response"]["recovered"] is True, rejoined
            await _publish(publisher, range(25, 28))
            while len([e for e in js.events if e["event"] == "event"]) < 28:
                await js.next("event")
        got = [e for e in js.events if e["event"] == "event"]
        assert [e["n"] for e in got] == list(range(28)), "every message once, in order"
        seqs = [int(e["ref"].split(":")[1]) for e in got]
        assert seqs == list(range(seqs[0], seqs[0] + 28)), "the sequence continues without a reset"
        assert len({e["ref"].split(":")[0] for e in got}) == 1, "one epoch throughout"
    finally:
        process.kill()
        await process.wait()
