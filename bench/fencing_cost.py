"""What fencing costs per publish: the owners of the code before it against today's, in one run.

Two topic servers (live ring, default settings) on a private Redis; two node layers in this process,
each with a member in every one of 100 rooms. The "before" owners run from a checkout of an older
commit (``--fencing-before REV``, default the last commit before fencing), today's from this tree;
the layers and the publishes are the same for both. A third run is today's with
DPS_REDIS_WAIT_REPLICAS=1 and a replica: what a replicated acknowledgement costs. Two ways to publish:

- one at a time: each publish waits for its delivery, so each owner batch holds one message (the
  worst case for a per-batch cost: a quiet chat);
- a burst: 8 publishers as fast as the layer takes them (batches of many messages).

Per publish: Redis commands (INFO commandstats, every command), bytes Redis received
(total_net_input_bytes), Redis CPU, the owners' CPU, and for one at a time the latency to delivery.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.processes import ROOT, ManagedProcess, RedisServer, dps_env, stop_all

__all__ = ["run", "print_report", "BEFORE"]

BEFORE = "4a6c6aa"  # main before the fenced owner
ROOMS = 100
ONE_AT_A_TIME = 1_000
BURST = 10_000
PUBLISHERS = 8
SERVERS = ("ts-1", "ts-2")
FRAME = "x" * 100


def run(before: str = BEFORE) -> list[dict]:
    """Measure the owners of commit `before`, then today's; one row per (code, mode)."""
    rows = []
    checkout = Path(tempfile.mkdtemp(prefix="dps-fencing-before-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(checkout), before], cwd=ROOT, check=True, capture_output=True
    )
    try:
        for code, tree, wait in (("before", checkout, 0), ("fenced", ROOT, 0), ("WAIT 1", ROOT, 1)):
            rows += _measure_code(code, tree, wait)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=ROOT, capture_output=True)
    return rows


def _measure_code(code: str, tree: Path, wait: int) -> list[dict]:
    redis = RedisServer()
    replica = RedisServer(replica_of=redis) if wait else None
    servers = []
    try:
        env = dps_env(DPS_REDIS_URL=redis.url, DPS_LOG_LEVEL="WARNING", DPS_REDIS_WAIT_REPLICAS=str(wait))
        servers = [
            ManagedProcess([sys.executable, "manage.py", "runtopicserver", "--name", name], env, f"{code}-{name}", tree)
            for name in SERVERS
        ]
        return asyncio.run(_measure(code, redis, servers, wait))
    finally:
        stop_all(servers)
        if replica is not None:
            replica.stop()
        redis.stop()


async def _measure(code, redis, servers, wait) -> list[dict]:
    from pubsub.layer import TopicRingLayer

    await _wait_for_ring(redis, list(SERVERS), servers)
    layers = [
        TopicRingLayer(node=f"bench-{n}", redis_url=redis.url, live_ring=True, capacity=BURST, redis_wait_replicas=wait)
        for n in "ab"
    ]
    rooms = [f"room:{n}" for n in range(ROOMS)]
    owners = [psutil.Process(server.process.pid) for server in servers]
    rows = []
    try:
        channels = [await layer.new_channel() for layer in layers]
        for layer, channel in zip(layers, channels, strict=True):
            await asyncio.gather(*(layer.group_add(room, channel) for room in rooms))
        for room in rooms:  # warm: every owner has served every room and node
            await _publish_one(layers, channels, room)
        for mode, count in (("one at a time", ONE_AT_A_TIME), ("burst", BURST)):
            before = _readings(redis, owners)
            started = time.perf_counter()
            latencies = []
            if mode == "one at a time":
                for n in range(count):
                    latencies.append(await _publish_one(layers, channels, rooms[n % ROOMS]))
            else:
                receiving = asyncio.gather(
                    *(_receive(layer, channel, count) for layer, channel in zip(layers, channels, strict=True))
                )
                await asyncio.gather(*(_burst(layers[0], rooms, count // PUBLISHERS, k) for k in range(PUBLISHERS)))
                await asyncio.wait_for(receiving, 120)
            elapsed = time.perf_counter() - started
            after = _readings(redis, owners)
            row = {"scenario": "fencing", "code": code, "mode": mode, "publishes": count}
            row.update({key: (after[key] - before[key]) / count for key in before})
            row["publishes_per_s"] = count / elapsed
            row["latency_p50_ms"] = 1e3 * statistics.median(latencies) if latencies else None
            rows.append(row)
    finally:
        for layer in layers:
            await layer.close()
    return rows


async def _wait_for_ring(redis, members, servers, timeout=30.0) -> None:
    import orjson

    deadline = time.monotonic() + timeout
    with redis.client() as client:
        while orjson.loads(client.hget("dps:ring", "members") or b"[]") != members:
            if time.monotonic() > deadline:
                raise RuntimeError("no ring of " + ", ".join(members) + ":\n" + "\n".join(s.output() for s in servers))
            await asyncio.sleep(0.05)


def _readings(redis, owners) -> dict:
    with redis.client() as client:
        commands = sum(stat["calls"] for stat in client.info("commandstats").values())
        received = client.info("stats")["total_net_input_bytes"]
    redis_cpu = sum(psutil.Process(redis.process.pid).cpu_times()[:2])
    owner_cpu = sum(sum(p.cpu_times()[:2]) for p in owners)
    return {
        "redis_commands": commands,
        "redis_bytes_in": received,
        "redis_cpu_us": 1e6 * redis_cpu,
        "owner_cpu_us": 1e6 * owner_cpu,
    }


async def _publish_one(layers, channels, room) -> float:
    started = time.perf_counter()
    await layers[0].group_send(room, {"type": "phx.broadcast", "topic": room, "tail": FRAME})
    for layer, channel in zip(layers, channels, strict=True):
        await asyncio.wait_for(layer.receive(channel), 10)
    return time.perf_counter() - started


async def _burst(layer, rooms, count, offset) -> None:
    for n in range(count):
        room = rooms[(n * PUBLISHERS + offset) % ROOMS]
        await layer.group_send(room, {"type": "phx.broadcast", "topic": room, "tail": FRAME})


async def _receive(layer, channel, count) -> None:
    for _ in range(count):
        await layer.receive(channel)


def print_report(rows) -> None:
    rows = [r for r in rows if r["scenario"] == "fencing"]
    if not rows:
        return
    print(f"\n== fencing: cost per publish, owners before it and fenced ({ROOMS} rooms, 2 owners, 2 nodes) ==")
    print(
        f"{'mode':<14} {'code':<7} {'publishes/s':>11} {'commands':>9} {'bytes in':>9} "
        f"{'Redis µs':>9} {'owner µs':>9} {'p50 ms':>7}"
    )
    for row in rows:
        p50 = f"{row['latency_p50_ms']:.2f}" if row["latency_p50_ms"] is not None else "-"
        print(
            f"{row['mode']:<14} {row['code']:<7} {row['publishes_per_s']:>11,.0f} {row['redis_commands']:>9.2f} "
            f"{row['redis_bytes_in']:>9.0f} {row['redis_cpu_us']:>9.1f} {row['owner_cpu_us']:>9.1f} {p50:>7}"
        )
    for mode in dict.fromkeys(r["mode"] for r in rows):
        old = next((r for r in rows if r["mode"] == mode and r["code"] == "before"), None)
        for code in ("fenced", "WAIT 1"):
            new = next((r for r in rows if r["mode"] == mode and r["code"] == code), None)
            if not (old and new):
                continue
            ratios = ", ".join(
                f"{name} {new[key] / old[key]:.2f}x"
                for name, key in (
                    ("commands", "redis_commands"),
                    ("bytes", "redis_bytes_in"),
                    ("Redis CPU", "redis_cpu_us"),
                    ("owner CPU", "owner_cpu_us"),
                    ("publishes/s", "publishes_per_s"),
                    ("p50", "latency_p50_ms"),
                )
                if old[key]
            )
            print(f"   {mode}, {code}/before: {ratios}")
