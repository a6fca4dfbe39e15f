"""The failover workload: 3 topic servers, 2 nodes, 200 subscribers on 50 topics, a steady publisher.

Shared by the fault tests (tests/test_failover.py, tests/test_pauses.py, tests/test_redis_cluster.py).
It records each publish that got an ok reply ("accepted"); report() says whether every subscriber
of its topic received it exactly once, and whether all subscribers of a topic saw their messages in
one order (the owner's sequence order).
"""

import asyncio
import contextlib
import json
import time
from collections import defaultdict

import websockets

from tests.conftest import Cluster

TTL = 2.0
TOPICS = [f"room:{i}" for i in range(50)]
SUBSCRIBERS = 200
SETTLE_TIMEOUT = 20


class Workload:
    """Subscribers spread over both nodes, one publisher on ws-a, and what each of them saw.

    Each topic's subscribers are on one node (subscriber i on ws-a if i is odd), or with both_nodes
    on both (the first 50 on ws-b, the next 50 on ws-a, ...), so that its one order is checked
    across nodes."""

    def __init__(self, cluster, both_nodes=False):
        self.cluster = cluster
        self.both_nodes = both_nodes
        self.subscribers = []  # (topic, websocket)
        self.received = defaultdict(list)  # subscriber index -> [(topic, n)]
        self.accepted = set()  # (topic, n)
        self.refused = 0
        self.pending = {}  # ref -> (topic, n)
        self.readers = []
        self.counter = 0

    async def start(self):
        async def subscribe(index):
            odd = (index // len(TOPICS) if self.both_nodes else index) % 2
            node = self.cluster.nodes["ws-a" if odd else "ws-b"]
            topic = TOPICS[index % len(TOPICS)]
            ws = await websockets.connect(node.url(), max_queue=None)
            await ws.send(json.dumps(["1", "1", topic, "phx_join", {}]))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))[4]["status"] == "ok"
            return topic, ws

        self.subscribers = list(await asyncio.gather(*(subscribe(index) for index in range(SUBSCRIBERS))))
        self.readers = [asyncio.ensure_future(self._read(index, ws)) for index, (_, ws) in enumerate(self.subscribers)]
        self.publisher = await websockets.connect(self.cluster.nodes["ws-a"].url(), max_queue=None)
        for topic in TOPICS:
            await self.publisher.send(json.dumps(["p", f"join-{topic}", topic, "phx_join", {}]))
        self.readers.append(asyncio.ensure_future(self._read_replies()))

    async def _read(self, index, ws):
        try:
            async for frame in ws:
                decoded = json.loads(frame)
                if decoded[3] == "n":
                    self.received[index].append((decoded[2], decoded[4]["n"]))
        except websockets.ConnectionClosed:
            pass

    async def _read_replies(self):
        try:
            async for frame in self.publisher:
                decoded = json.loads(frame)
                if decoded[3] == "phx_reply" and decoded[1] in self.pending:
                    if decoded[4]["status"] == "ok":
                        self.accepted.add(self.pending.pop(decoded[1]))
                    else:
                        self.pending.pop(decoded[1])
                        self.refused += 1
        except websockets.ConnectionClosed:
            pass

    async def publish(self, seconds, rate=100):
        """Publish round robin over the topics for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            topic = TOPICS[self.counter % len(TOPICS)]
            ref = f"m{self.counter}"
            self.pending[ref] = (topic, self.counter)
            await self.publisher.send(json.dumps(["p", ref, topic, "publish", ["n", {"n": self.counter}]]))
            self.counter += 1
            await asyncio.sleep(1 / rate)

    def missing(self, numbers=range(0, 10**9)):
        want = defaultdict(set)
        for topic, n in self.accepted:
            if n in numbers:
                want[topic].add(n)
        return {
            index: want[topic] - {n for _, n in self.received[index]}
            for index, (topic, _) in enumerate(self.subscribers)
            if want[topic] - {n for _, n in self.received[index]}
        }

    async def settle(self, numbers=range(0, 10**9)):
        """Wait for the replies and for every accepted message to arrive (bounded)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while (self.pending or self.missing(numbers)) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # duplicates, if any, would arrive now

    def report(self, numbers=range(0, 10**9)):
        """Counts for the publishes numbered in `numbers` (all by default)."""
        missing = self.missing(numbers)
        duplicates = sum(
            len(mine) - len(set(mine))
            for got in self.received.values()
            for mine in [[x for x in got if x[1] in numbers]]
        )
        orders = defaultdict(set)
        for index, (topic, _) in enumerate(self.subscribers):
            orders[topic].add(tuple(n for t, n in self.received[index] if (t, n) in self.accepted and n in numbers))
        disagreeing = [topic for topic, seen in orders.items() if len(seen) > 1]
        return {
            "published": len([n for n in range(self.counter) if n in numbers]),
            "accepted": len([x for x in self.accepted if x[1] in numbers]),
            "refused (whole run)": self.refused,
            "unanswered": len(self.pending),
            "deliveries": sum(1 for got in self.received.values() for x in got if x[1] in numbers),
            "lost": sum(len(m) for m in missing.values()),
            "duplicates": duplicates,
            "topics_out_of_order": len(disagreeing),
        }

    async def stop(self):
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(
            *(ws.close() for _, ws in self.subscribers), self.publisher.close(), return_exceptions=True
        )


@contextlib.asynccontextmanager
async def running_workload(redis, both_nodes=False):
    """A cluster (3 topic servers, 2 nodes) over redis (a kind of Cluster's) with its subscribers and
    publisher started (both_nodes: see Workload). No DPS_RING: the default (the live ring, with
    failover) is what is tested."""
    # The one publisher stands for many users, at 100 publishes/s: no per-socket rate limit for it.
    servers = ["ts-1", "ts-2", "ts-3"]
    cluster = Cluster(topic_servers=servers, redis=redis, DPS_LIVENESS_TTL=str(TTL), DPS_PUBLISH_RATE="0")
    started = None
    try:
        wait_for_ring(cluster, servers)
        started = Workload(cluster, both_nodes)
        await started.start()
        yield started
    finally:
        if started is not None:
            await started.stop()
        cluster.stop()


def wait_for_ring(cluster, members, timeout=4 * TTL):
    """Block until the live ring in Redis has exactly these members; returns the seconds it took."""
    started = time.monotonic()
    with cluster.redis.client() as client:
        while True:
            current = client.hget("dps:ring", "members")
            if current and json.loads(current) == members:
                return time.monotonic() - started
            assert time.monotonic() - started < timeout, f"ring is {current}, not {members}"
            time.sleep(0.02)


def assert_exactly_once(report):
    print(f"\n{report}")
    assert report["accepted"] > 0
    assert report["lost"] == 0, report
    assert report["duplicates"] == 0, report
    assert report["topics_out_of_order"] == 0, report
