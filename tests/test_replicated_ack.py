"""DPS_REDIS_WAIT_REPLICAS: a publisher's ok waits until a replica has the message.

A real master and replica; a node and a topic server asking for one replica. While the replica is
frozen, a publish is answered with an error (it may still be delivered: the master has it); once the
replica is back, publishes are acknowledged again and every acknowledged one is delivered.
"""

import asyncio
import json
import signal
import time

import pytest
import websockets

from tests.processes import DaphneNode, RedisServer, TopicServerProcess

pytestmark = pytest.mark.processes

TOPIC = "room:replicated"


@pytest.fixture
def replicated():
    master = RedisServer()
    started = [master]
    try:
        replica = RedisServer(replica_of=master)
        started.append(replica)
        settings = {
            "DPS_REDIS_URL": master.url,
            "DPS_REDIS_WAIT_REPLICAS": "1",
            "DPS_REDIS_WAIT_TIMEOUT": "0.3",
            "DPS_TOPIC_SERVERS": "ts-1",
        }
        started.append(TopicServerProcess("ts-1", master, (), True, **settings))
        node = DaphneNode(DPS_NODE="ws-a", **settings)
        started.append(node)
        yield node, replica
    finally:
        for process in reversed(started):
            process.stop()


async def publish(ws, ref, n):
    await ws.send(json.dumps(["1", ref, TOPIC, "publish", ["n", {"n": n}]]))


async def test_an_ok_waits_for_a_replica(replicated):
    node, replica = replicated
    async with websockets.connect(node.url()) as ws:
        await ws.send(json.dumps(["1", "1", TOPIC, "phx_join", {}]))
        replies, delivered = {}, []

        async def read():
            async for frame in ws:
                join_ref, ref, _, event, payload = json.loads(frame)
                if event == "phx_reply":
                    replies[ref] = payload
                elif event == "n":
                    delivered.append(payload["n"])

        reader = asyncio.ensure_future(read())

        async def answer(ref, timeout=10):
            deadline = time.monotonic() + timeout
            while ref not in replies:
                assert time.monotonic() < deadline, f"no reply to {ref}"
                await asyncio.sleep(0.01)
            return replies[ref]

        try:
            assert (await answer("1"))["status"] == "ok"
            await publish(ws, "p0", 0)
            assert (await answer("p0"))["status"] == "ok"
            replica.process.send_signal(signal.SIGSTOP)
            await publish(ws, "p1", 1)
            refused = await answer("p1")
            assert refused["status"] == "error" and refused["response"]["reason"] == "unavailable", refused
            replica.process.send_signal(signal.SIGCONT)
            started = time.monotonic()
            for n in range(2, 12):
                await publish(ws, f"p{n}", n)
                assert (await answer(f"p{n}"))["status"] == "ok"
            per_publish = (time.monotonic() - started) / 10
            deadline = time.monotonic() + 10
            while not {0, *range(2, 12)} <= set(delivered):
                assert time.monotonic() < deadline, f"acknowledged publishes missing: {delivered}"
                await asyncio.sleep(0.02)
            print(f"\nwith a replica acknowledging: {1000 * per_publish:.1f} ms per publish, one at a time")
        finally:
            reader.cancel()
    assert node.process.poll() is None, node.output()
