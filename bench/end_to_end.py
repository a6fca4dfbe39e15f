"""Scenarios 1-4 on every stack: the layer fan-out, end to end over websockets (burst and paced, and on\nseveral node processes sharing a port), the connect storm and idle memory per connection."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import websockets

from bench import layer_fanout
from bench.clients import ClientGroup
from bench.logs import log
from bench.stacks import Stack

TOPIC = "bench:room"


LAYER_DELIVERIES = 200_000  # per layer fan-out measurement: publishes = this / members (at least the minimum)


def layer_scenario(stacks, sizes, publishes) -> list[dict]:
    rows = []
    for members in sizes:
        for name in stacks:
            log(f"layer fan-out: {name}, {members} members")
            stack = Stack(name, nodes=0)
            try:
                # Enough publishes that a run measures steady fan-out, not its first milliseconds
                # (with 10-20 publishes small groups measured mostly start-up and noise).
                count = max(publishes, LAYER_DELIVERIES // members)
                row = layer_fanout.run(name, stack.redis, members, count)
            finally:
                stack.stop()
            rows.append({"scenario": "layer", "stack": name, **row})
            log(f"  {row['deliveries_per_s']:,.0f} deliveries/s, lost {row['lost']}")
    return rows


async def _publisher(url):
    ws = await websockets.connect(url, max_queue=None, ping_interval=None)
    await ws.send(json.dumps(["p", "p", TOPIC, "phx_join", {}]))
    await ws.recv()
    drain = asyncio.ensure_future(_drain(ws))
    return ws, drain


async def _drain(ws):
    try:
        async for _ in ws:
            pass
    except websockets.ConnectionClosed:
        pass


async def _send_publishes(ws, count, interval):
    for n in range(count):
        await ws.send(
            json.dumps(["p", str(n), TOPIC, "publish", ["bench", {"n": n, "t": time.time(), "pad": "x" * 64}]])
        )
        if interval:
            await asyncio.sleep(interval)


def end_to_end(name, clients, burst, paced, nodes=2, one_port=False) -> list[dict]:
    """Rows of scenario "e2e" (2 nodes on their own ports), or "cores" with one_port: `nodes` node
    processes sharing one listening socket, the burst only."""
    where = f", {nodes} node processes on one port" if one_port else ""
    log(f"end to end: {name}, {clients} subscribers{where}")
    stack = Stack(name, nodes=nodes, one_port=one_port)
    groups = []
    try:
        urls = stack.urls()
        groups = [ClientGroup(urls, clients // 2, TOPIC) for _ in range(2)]
        ready = [group.ready() for group in groups]
        if sum(r["failures"] for r in ready):
            log(f"  join failures: {[r['errors'] for r in ready]}")
        rows = asyncio.run(_end_to_end(name, stack, groups, clients, burst, paced))
        if one_port:
            spread = stack.connections()
            for row in rows:
                row.update(scenario="cores", processes=nodes, connections_per_process=spread)
            log(f"  connections per process: {spread}")
        return rows
    finally:
        for group in groups:
            group.close()
        stack.stop()


async def _end_to_end(name, stack, groups, clients, burst, paced):
    ws, drain = await _publisher(stack.urls()[0])
    rows = []
    modes = [("burst", burst, 0.0), ("paced 2/s", paced, 0.5)]
    for mode, count, interval in [m for m in modes if m[1]]:
        timeout = 30 + clients * count / 2000 + count * interval
        cpu_before, ts_before = stack.daphne_cpu(), stack.topic_server_cpu()
        waits = asyncio.gather(*(asyncio.to_thread(group.expect, count, timeout) for group in groups))
        await asyncio.sleep(0.3)
        started = time.time()
        await _send_publishes(ws, count, interval)
        results = await waits
        received = sum(r["received"] for r in results)
        expected = sum(r["expected"] for r in results)
        latencies = sorted(x for r in results for x in r["latencies"])
        elapsed = max(max(r["last"] for r in results) - started, 1e-9)
        cpu = stack.daphne_cpu() - cpu_before
        row = {
            "scenario": "e2e",
            "stack": name,
            "mode": mode,
            "clients": clients,
            "publishes": count,
            "deliveries_per_s": received / elapsed,
            "lost": expected - received,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
            "max_ms": 1000 * latencies[-1] if latencies else None,
            "daphne_cpu_us_per_delivery": 1e6 * cpu / received if received else None,
            "topic_server_cpu_us_per_delivery": 1e6 * (stack.topic_server_cpu() - ts_before) / received
            if received
            else None,
        }
        rows.append(row)
        log(
            f"  {mode}: {row['deliveries_per_s']:,.0f} deliveries/s, p99 {row['p99_ms'] or 0:.0f} ms, "
            f"lost {row['lost']}, {row['daphne_cpu_us_per_delivery'] or 0:.0f} µs daphne CPU per delivery"
        )
    drain.cancel()
    await ws.close()
    return rows


def connect_storm(name, count) -> dict:
    log(f"connect storm: {name}, {count} simultaneous handshakes")
    stack = Stack(name, nodes=1)
    group = None
    try:
        group = ClientGroup(stack.urls(), count, TOPIC, batch=count)
        ready = group.ready()
    finally:
        if group is not None:
            group.close()
        stack.stop()
    log(f"  failures {ready['failures']}, {ready['seconds']:.2f} s {ready['errors'][:1]}")
    return {
        "scenario": "storm",
        "stack": name,
        "handshakes": count,
        "failures": ready["failures"],
        "seconds": ready["seconds"],
    }


def idle_memory(name, count) -> dict:
    log(f"idle memory: {name}, {count} idle connections on one node")
    stack = Stack(name, nodes=1)
    groups = []
    try:
        time.sleep(1)
        before = stack.node_rss()
        groups = [ClientGroup(stack.urls(), count // 2, TOPIC) for _ in range(2)]
        connected = sum(group.ready()["connected"] for group in groups)
        time.sleep(2)
        after = stack.node_rss()
    finally:
        for group in groups:
            group.close()
        stack.stop()
    per = (after - before) / max(connected, 1)
    log(f"  {connected} connected, {per / 1024:.1f} KB RSS per connection")
    return {"scenario": "memory", "stack": name, "connections": connected, "kb_per_connection": per / 1024}


def longpoll_memory(count) -> dict:
    """RSS per idle long-poll session (joined to one topic, as an idle websocket client is), measured
    within the session expiry, on the same one-node DPS stack as idle_memory's websockets."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    log(f"idle memory: dps, {count} idle long-poll sessions on one node")
    stack = Stack("dps", nodes=1)
    try:
        time.sleep(1)
        base = stack.urls()[0].replace("ws://", "http://").replace("/socket/websocket", "/socket/longpoll")
        before = stack.node_rss()

        def session(index: int) -> bool:
            with requests.Session() as http:
                opened = http.get(base, timeout=30).json()
                if opened.get("status") != 410:
                    return False
                frame = f'["{index}","1","{TOPIC}","phx_join",{{}}]'
                url = base + "&token=" + opened["token"]
                headers = {"Content-Type": "application/x-ndjson"}
                return http.post(url, data=frame, headers=headers, timeout=30).json().get("status") == 200

        with ThreadPoolExecutor(32) as pool:
            opened = sum(pool.map(session, range(count)))
        time.sleep(2)
        after = stack.node_rss()
    finally:
        stack.stop()
    per = (after - before) / max(opened, 1)
    log(f"  {opened} sessions, {per / 1024:.1f} KB RSS per session")
    return {"scenario": "memory", "stack": "dps long-poll", "connections": opened, "kb_per_connection": per / 1024}
