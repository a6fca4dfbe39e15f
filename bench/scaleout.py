"""What Redis shards buy: the chat workload's publishes on one Redis against a 3-master Redis Cluster.

Three topic server processes and three nodes (layers in this process, each with its own stream, as
a deployment has several) with a member in each of 1,000 rooms, a room's member on one of them;
publishers on the first node send to random rooms as fast as the layer takes them (coalesced
appends, as a busy node does), then wait until every message came back. Measured on each Redis, in the same run:
publishes/s end to end, Redis CPU per publish over all its processes, and the busiest Redis
process's CPU per publish. One Redis process runs on one core, so the busiest one sets the
ceiling: 1 s / (its CPU per publish) is the publish rate at which it saturates. A cluster spreads
the keys (topics, inboxes, node streams) over its masters; on this 2-core machine the Python
processes saturate first, so the ceiling column is the figure that tells what shards add.
"""

from __future__ import annotations

import asyncio
import random
import time

import psutil

from tests.processes import RedisClusterServer, RedisServer, TopicServerProcess, stop_all

ROOMS = 1000
PUBLISHES = 20_000
PUBLISHERS = 8  # concurrent senders on the first node (chat users on many sockets)
SERVERS = ("ts-1", "ts-2", "ts-3")
NODES = ("bench-a", "bench-b", "bench-c")
FRAME = "x" * 100


def run(kind: str) -> dict:
    redis = RedisServer() if kind == "redis" else RedisClusterServer(masters=3)
    settings = {"DPS_TOPIC_SERVERS": ",".join(SERVERS), "DPS_RING": "static", "DPS_LOG_LEVEL": "WARNING"}
    servers = []
    try:
        servers = [TopicServerProcess(name, redis, **settings) for name in SERVERS]
        return asyncio.run(_measure(kind, redis, servers))
    finally:
        stop_all(servers)
        redis.stop()


def _redis_processes(redis) -> list[psutil.Process]:
    members = redis.servers if isinstance(redis, RedisClusterServer) else [redis]
    return [psutil.Process(member.process.pid) for member in members]


def _cpu(processes) -> list[float]:
    return [sum(p.cpu_times()[:2]) for p in processes]


async def _measure(kind, redis, servers) -> dict:
    from pubsub.layer import TopicRingLayer

    layers = [
        TopicRingLayer(node=node, topic_servers=list(SERVERS), redis_url=redis.url, live_ring=False, capacity=PUBLISHES)
        for node in NODES
    ]
    rooms = [f"room:{n}" for n in range(ROOMS)]
    redis_procs = _redis_processes(redis)
    owner_procs = [psutil.Process(server.process.pid) for server in servers]
    try:
        channels = [await layer.new_channel() for layer in layers]
        await asyncio.gather(*(layers[n % 3].group_add(room, channels[n % 3]) for n, room in enumerate(rooms)))
        await _round_trip(layers, channels, rooms[:60])  # warm: every owner has served every node
        redis_before, owners_before = _cpu(redis_procs), sum(_cpu(owner_procs))
        started = time.perf_counter()
        receiving = asyncio.ensure_future(_receive(layers, channels, PUBLISHES))
        publisher = layers[0]
        await asyncio.gather(*(_publish(publisher, rooms, PUBLISHES // PUBLISHERS, seed) for seed in range(PUBLISHERS)))
        await asyncio.wait_for(receiving, 120)
        elapsed = time.perf_counter() - started
        redis_cpu = [after - before for after, before in zip(_cpu(redis_procs), redis_before, strict=True)]
        owners_cpu = sum(_cpu(owner_procs)) - owners_before
    finally:
        for layer in layers:
            await layer.close()
    busiest = max(redis_cpu) / PUBLISHES
    return {
        "scenario": "scaleout",
        "redis": kind,
        "redis_processes": len(redis_procs),
        "publishes": PUBLISHES,
        "rooms": ROOMS,
        "publishes_per_s": PUBLISHES / elapsed,
        "redis_cpu_us_per_publish": 1e6 * sum(redis_cpu) / PUBLISHES,
        "busiest_redis_cpu_us_per_publish": 1e6 * busiest,
        "redis_ceiling_publishes_per_s": 1 / busiest if busiest else None,
        "redis_cpu_us_per_publish_each": [round(1e6 * cpu / PUBLISHES, 1) for cpu in redis_cpu],
        "topic_server_cpu_us_per_publish": 1e6 * owners_cpu / PUBLISHES,
    }


async def _round_trip(layers, channels, rooms) -> None:
    for room in rooms:
        await layers[0].group_send(room, {"type": "phx.broadcast", "topic": room, "tail": FRAME})
    await asyncio.wait_for(_receive(layers, channels, len(rooms)), 30)


async def _publish(layer, rooms, count, seed) -> None:
    pick = random.Random(seed).choice
    for _ in range(count):
        room = pick(rooms)
        await layer.group_send(room, {"type": "phx.broadcast", "topic": room, "tail": FRAME})


async def _receive(layers, channels, count) -> None:
    """Until count messages arrived over all the nodes' channels."""
    left = [count]

    async def drain(layer, channel):
        while left[0] > 0:
            await layer.receive(channel)
            left[0] -= 1
            if left[0] == 0:
                for other in waiting:
                    other.cancel()

    waiting = [asyncio.ensure_future(drain(layer, channel)) for layer, channel in zip(layers, channels, strict=True)]
    await asyncio.gather(*waiting, return_exceptions=True)


def print_report(rows) -> None:
    rows = [r for r in rows if r["scenario"] == "scaleout"]
    if not rows:
        return
    print(f"\n== scale-out: one Redis vs a 3-master Redis Cluster ({ROOMS:,} rooms, 3 owners, 3 nodes) ==")
    print(
        f"{'redis':<14} {'procs':>5} {'publishes/s':>12} {'Redis µs/pub':>13} {'busiest µs/pub':>15} "
        f"{'Redis ceiling/s':>16} {'owner µs/pub':>13}"
    )
    for row in rows:
        print(
            f"{row['redis']:<14} {row['redis_processes']:>5} {row['publishes_per_s']:>12,.0f} "
            f"{row['redis_cpu_us_per_publish']:>13.1f} {row['busiest_redis_cpu_us_per_publish']:>15.1f} "
            f"{row['redis_ceiling_publishes_per_s'] or 0:>16,.0f} {row['topic_server_cpu_us_per_publish']:>13.1f}"
        )
    for row in rows:
        each = ", ".join(f"{cpu:.0f}" for cpu in row["redis_cpu_us_per_publish_each"])
        print(f"   {row['redis']}: Redis CPU per publish on each process (µs): {each}")
    single = next((r for r in rows if r["redis"] == "redis"), None)
    cluster = next((r for r in rows if r["redis"] == "redis-cluster"), None)
    if single and cluster:
        print(
            f"   cluster/one Redis: publishes/s {cluster['publishes_per_s'] / single['publishes_per_s']:.2f}x, "
            f"Redis ceiling {cluster['redis_ceiling_publishes_per_s'] / single['redis_ceiling_publishes_per_s']:.2f}x, "
            f"total Redis CPU per publish {cluster['redis_cpu_us_per_publish'] / single['redis_cpu_us_per_publish']:.2f}x"
        )
