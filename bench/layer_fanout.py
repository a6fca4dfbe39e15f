"""Layer-level fan-out: group_send to N members held by 2 node processes, no websockets.

Each node process builds the layer under test, makes its share of channels, adds
them to one group and runs one receive loop per channel (what a consumer does).
The publisher group_sends from this process; deliveries/s is members x publishes
over the time from the first send to the last receipt.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time

GROUP = "bench"


def make_layer(stack: str, redis_url: str, node: str):
    if stack == "dps":
        from pubsub.layer import TopicRingLayer

        return TopicRingLayer(node=node, topic_servers=["ts-1", "ts-2"], redis_url=redis_url, capacity=100_000)
    if stack == "stock-core":
        from channels_redis.core import RedisChannelLayer

        return RedisChannelLayer(hosts=[redis_url])  # the default capacity, as users run it
    if stack == "stock-pubsub":
        from channels_redis.pubsub import RedisPubSubChannelLayer

        return RedisPubSubChannelLayer(hosts=[redis_url])
    raise ValueError(stack)


class NodeProcess:
    def __init__(self, stack: str, redis_url: str, node: str, members: int):
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=_run, args=(stack, redis_url, node, members, child), daemon=True)
        self.process.start()

    def wait(self, timeout: float) -> dict:
        if not self.pipe.poll(timeout):
            raise TimeoutError("layer node process did not answer")
        return self.pipe.recv()

    def expect(self, per_member: int, timeout: float) -> dict:
        self.pipe.send((per_member, timeout))
        return self.wait(timeout + 60)

    def stop(self) -> None:
        self.process.kill()
        self.process.join(10)


def _run(stack, redis_url, node, members, pipe):
    # channels_redis's pub/sub layer logs a traceback per channel when its receive() is cancelled at the end
    logging.getLogger("channels_redis").setLevel(logging.CRITICAL)
    asyncio.run(_node(stack, redis_url, node, members, pipe))


async def _node(stack, redis_url, node, members, pipe):
    layer = make_layer(stack, redis_url, node)
    channels = [await layer.new_channel() for _ in range(members)]
    for channel in channels:
        await layer.group_add(GROUP, channel)
    counts = [0] * members
    last = [0.0]
    target = [0]
    done = asyncio.Event()

    async def receive(index, channel):
        while True:
            await layer.receive(channel)
            counts[index] += 1
            last[0] = time.time()
            if counts[index] == target[0] and all(c >= target[0] for c in counts):
                done.set()

    tasks = [asyncio.ensure_future(receive(i, c)) for i, c in enumerate(channels)]
    await asyncio.sleep(0.5)  # let every receive() start listening (the pub/sub layer subscribes lazily)
    pipe.send({"ready": members})
    loop = asyncio.get_running_loop()
    per_member, timeout = await loop.run_in_executor(None, pipe.recv)
    target[0] = per_member
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except TimeoutError:
        pass
    await asyncio.sleep(0.5)  # anything late or duplicated shows in the count
    pipe.send({"received": sum(counts), "last": last[0]})
    for task in tasks:
        task.cancel()


def run(stack: str, redis, members: int, publishes: int, payload_bytes: int = 100) -> dict:
    """One fan-out measurement; redis is the stack's RedisServer (INFO is read around the publishes)."""
    nodes = [NodeProcess(stack, redis.url, f"ws-{i}", members // 2) for i in range(2)]
    try:
        for node in nodes:
            node.wait(600)
        client = redis.client()
        result = asyncio.run(_publish(stack, redis, client, nodes, members, publishes, payload_bytes))
        client.close()
        return result
    finally:
        for node in nodes:
            node.stop()


async def _publish(stack, redis, client, nodes, members, publishes, payload_bytes):
    layer = make_layer(stack, redis.url, "publisher")
    timeout = 30 + members * publishes / 2000
    waits = [asyncio.to_thread(node.expect, publishes, timeout) for node in nodes]
    before = _redis_counters(client)
    pending = asyncio.gather(*waits)
    await asyncio.sleep(0.2)  # the node processes are counting before the first send
    started = time.time()
    for n in range(publishes):
        await layer.group_send(GROUP, {"type": "bench.message", "n": n, "pad": "x" * payload_bytes})
    results = await pending
    after = _redis_counters(client)
    received = sum(r["received"] for r in results)
    expected = (members // 2) * 2 * publishes
    last = max(r["last"] for r in results)
    elapsed = max(last - started, 1e-9)
    if hasattr(layer, "close"):
        await layer.close()
    return {
        "members": members,
        "publishes": publishes,
        "deliveries_per_s": received / elapsed if received else 0.0,
        "lost": max(0, expected - received),
        "duplicates": max(0, received - expected),
        "redis_commands_per_publish": (after["commands"] - before["commands"]) / publishes,
        "redis_bytes_per_publish": (after["bytes"] - before["bytes"]) / publishes,
    }


def _redis_counters(client) -> dict:
    stats = client.info("commandstats")
    net = client.info("stats")
    return {
        "commands": sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_") and k != "cmdstat_info"),
        "bytes": net["total_net_input_bytes"] + net["total_net_output_bytes"],
    }
