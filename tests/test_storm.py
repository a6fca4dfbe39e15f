"""A chat under real load, on real processes: 2 daphne nodes, 3 topic servers, one Redis.

- a storm: hundreds of clients connect and join rooms at the same moment, then all publish at once;
- overload: far more publishes than the machine can serve for a while, then a normal rate again.
Every publish that got an ok reply must reach every member of its room exactly once.
"""

import asyncio
import re
import time

import pytest

from tests.chat_load import Member, accepted, join_all, wait_delivered, wait_replies
from tests.conftest import Cluster

pytestmark = pytest.mark.processes

TOPIC_SERVERS = ("ts-1", "ts-2", "ts-3")


@pytest.fixture
def chat_cluster():
    """Default settings (the live ring) but for a short liveness TTL: a starved heartbeat shows sooner."""
    cluster = Cluster(topic_servers=TOPIC_SERVERS, DPS_LIVENESS_TTL="2")
    try:
        _wait_for_full_ring(cluster)
        yield cluster
    finally:
        cluster.stop()


def _wait_for_full_ring(cluster, timeout=20):
    client = cluster.redis.client()
    deadline = time.monotonic() + timeout
    while (client.hget("dps:ring", "members") or b"").count(b"ts-") < len(TOPIC_SERVERS):
        assert time.monotonic() < deadline, "the live ring never held all three topic servers"
        time.sleep(0.05)
    client.close()


def _appends_per_round_trip(cluster) -> dict[str, str]:
    """What coalescing did, from each node's last snapshot: appends and the round trips they took."""
    import json

    client = cluster.redis.client()
    asked = time.time()
    out = {}
    for name in cluster.nodes:
        deadline = time.monotonic() + 10
        while True:  # a snapshot taken after this question (nodes publish one about every second)
            snapshot = json.loads(client.get(f"dps:snapshot:node:{{{name}}}") or b"{}")
            if snapshot.get("at", 0) > asked or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        stats = snapshot.get("stats", {})
        if stats.get("append_round_trips"):
            out[name] = f"{stats['appends']} appends in {stats['append_round_trips']} round trips"
    client.close()
    return out


def _urls(cluster):
    return [node.url() for node in cluster.nodes.values()]


async def test_join_storm_then_everyone_publishes(chat_cluster):
    clients, rooms, rounds = 500, 50, 3
    members = [Member(i, f"room:{i % rooms}") for i in range(clients)]
    try:
        started = time.monotonic()
        joins = await join_all(members, _urls(chat_cluster))
        joined_in = time.monotonic() - started
        assert joins == {"ok": clients}, f"joins at once: {joins}"

        refs = [f"p{k}" for k in range(rounds)]
        for k in range(rounds):  # every member publishes at the same moment, three times
            await asyncio.gather(*(member.publish(k) for member in members))
        replies = await wait_replies(members, refs)
        assert replies == {"ok": clients * rounds}, f"publish replies: {replies}"
        report = await wait_delivered(members, accepted(members, refs))
        print(
            f"\nstorm: {clients} joined {rooms} rooms at once in {joined_in:.2f}s; {replies}; {report}; "
            f"Redis appends per round trip on the nodes: {_appends_per_round_trip(chat_cluster)}"
        )
        assert report["lost"] == 0 and report["duplicates"] == 0, report
        assert report["deliveries"] == clients * rounds * (clients // rooms)
    finally:
        await asyncio.gather(*(member.close() for member in members), return_exceptions=True)


async def test_overload_then_normal_rate_delivers_everything_again(chat_cluster):
    """Past saturation nothing may turn into permanent loss: once the load falls, every member gets
    every message again, and no owner ever took a running node for dead."""
    clients, rooms = 200, 20
    members = [Member(i, f"room:{i % rooms}") for i in range(clients)]
    try:
        assert await join_all(members, _urls(chat_cluster)) == {"ok": clients}
        # Overload: every member fires 150 publishes without waiting (30,000 publishes, 300,000
        # deliveries at once: far past what 2 cores serve in the time), within the default burst.
        blast = range(1000, 1150)
        started = time.monotonic()
        for k in blast:
            await asyncio.gather(*(member.publish(k) for member in members))
        blast_refs = [f"p{k}" for k in blast]
        blast_replies = await wait_replies(members, blast_refs, timeout=240)
        worked_off = time.monotonic() - started
        # Then a normal rate: one publish per member per second, for 3 seconds.
        normal = range(3)
        for k in normal:
            await asyncio.gather(*(member.publish(k) for member in members))
            await asyncio.sleep(1)
        normal_refs = [f"p{k}" for k in normal]
        normal_replies = await wait_replies(members, normal_refs)
        assert normal_replies == {"ok": clients * len(normal)}, normal_replies
        want = accepted(members, [*blast_refs, *normal_refs])
        after = await wait_delivered(members, want, ks=set(normal), timeout=120)
        during = await wait_delivered(members, want, ks=set(blast), timeout=60)
        outputs = {name: process.output() for name, process in chat_cluster.topic_servers.items()}
        print(
            f"\noverload: {len(blast) * clients} publishes fired at once, replies {dict(blast_replies)} "
            f"within {worked_off:.1f}s; during: {during}; normal rate after: {after}"
        )
        assert after["lost"] == 0 and after["duplicates"] == 0, f"after the overload: {after}"
        assert during["lost"] == 0 and during["duplicates"] == 0, f"accepted during the overload: {during}"
        for name, output in outputs.items():
            assert not re.search(r"node ws-\w+ missed its heartbeat", output), f"{name} dropped a running node"
    finally:
        await asyncio.gather(*(member.close() for member in members), return_exceptions=True)
