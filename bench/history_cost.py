"""What history costs per publish: Redis commands and bytes with DPS_HISTORY_SIZE 100 against 0.

One topic server process over a private Redis, one node (this process) with one member in each of
10 topics, 2,000 publishes; Redis' own counters (INFO) before and after, divided by the publishes.
The commands and bytes of every process count: the node's append, the owner's read and commit, the
node's read.
"""

from __future__ import annotations

import asyncio

from tests.processes import RedisServer, TopicServerProcess

PUBLISHES = 2000
TOPICS = 10


def run(history_size: int) -> dict:
    redis = RedisServer()
    server = TopicServerProcess("ts-1", redis, DPS_HISTORY_SIZE=str(history_size), DPS_LOG_LEVEL="WARNING")
    try:
        return asyncio.run(_measure(redis, history_size))
    finally:
        server.stop()
        redis.stop()


def _counters(client) -> dict:
    stats = client.info("stats")
    return {
        "commands": stats["total_commands_processed"],
        "bytes": stats["total_net_input_bytes"] + stats["total_net_output_bytes"],
    }


async def _measure(redis, history_size: int) -> dict:
    from pubsub.layer import TopicRingLayer

    layer = TopicRingLayer(node="bench-history", topic_servers=["ts-1"], redis_url=redis.url, capacity=PUBLISHES)
    client = redis.client()
    try:
        channel = await layer.new_channel()
        for t in range(TOPICS):
            await layer.group_add(f"room:{t}", channel)
        await asyncio.sleep(1.0)  # joins settled: what follows is publishing alone (heartbeats aside)
        before = _counters(client)
        for n in range(PUBLISHES):
            await layer.group_send(f"room:{n % TOPICS}", {"type": "phx.broadcast", "topic": "t", "tail": "x" * 100})
        for _ in range(PUBLISHES):
            await asyncio.wait_for(layer.receive(channel), 30)
        after = _counters(client)
    finally:
        await layer.close()
        client.close()
    return {
        "scenario": "history",
        "history_size": history_size,
        "commands_per_publish": (after["commands"] - before["commands"]) / PUBLISHES,
        "bytes_per_publish": (after["bytes"] - before["bytes"]) / PUBLISHES,
    }


def print_report(rows) -> None:
    rows = [r for r in rows if r["scenario"] == "history"]
    if not rows:
        return
    print("\n== history: Redis cost per publish (one owner, one node, 10 topics, 100-byte frames) ==")
    print(f"{'history':>8} {'commands/publish':>17} {'bytes/publish':>14}")
    for row in rows:
        print(f"{row['history_size']:>8} {row['commands_per_publish']:>17.2f} {row['bytes_per_publish']:>14,.0f}")
