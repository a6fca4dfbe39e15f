"""``python -m bench [--quick]``: DPS side by side with stock Django Channels, in one run, on loopback.

Scenarios (each on every stack that applies, measured in the same run so ratios compare like with like):
1. layer fan-out: group_send to 100 / 1,000 / 10,000 members over 2 node processes;
2. end to end: 2 daphne nodes, websocket subscribers, one publisher, burst and paced at 2 msg/s;
   and "cores": the burst on 1 and on 2 DPS node processes sharing one listening port (daphne --fd);
3. connect storm: 1,000 simultaneous handshakes;
4. idle memory: RSS per idle connection of one node;
5. the floor: a bare ASGI app on daphne writing one pre-encoded frame to every socket;
6. chat: many rooms, every client publishing at random, offered load raised until each stack
   saturates, and a join storm (bench/chat.py);
7. presence: 1,000 and 10,000 members joining one room at once, diff frames and bytes, DPS against
   Phoenix's one diff per join (bench/presence.py);
8. history: Redis commands and bytes per publish with history on and off (bench/history_cost.py);
9. scale-out: publishes/s and Redis CPU per publish on one Redis and on a 3-master Redis Cluster
   (bench/scaleout.py).
chaos (only with --only chaos): dpsverify through runcluster --chaos, 3 topic servers, 2 nodes
   (bench/chaos.py; it needs manage.py dpsverify).
Prints a table with the ratios, writes bench/results/<time>.json and a PNG plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import websockets

from bench import chaos, chat, fencing_cost, history_cost, layer_fanout, presence, scaleout
from bench.clients import ClientGroup
from bench.logs import log
from bench.stacks import STACKS, Stack

RESULTS = Path(__file__).parent / "results"
TOPIC = "bench:room"
LAYER_DELIVERIES = 200_000  # per layer fan-out measurement: publishes = this / members (at least the minimum)


# Scenario 1


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


# Scenarios 2 and 5


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


# Scenario 3


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


# Scenario 4


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


# Report


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "–"


def print_report(rows) -> None:
    def find(**match):
        return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)

    ran = {r["scenario"] for r in rows}
    if "layer" in ran:
        print("\n== layer fan-out (2 node processes) ==")
        print(
            f"{'members':>8} {'stack':<13} {'deliveries/s':>13} {'lost':>6} {'cmds/pub':>9} {'bytes/pub':>10} {'DPS ratio':>10}"
        )
        for row in [r for r in rows if r["scenario"] == "layer"]:
            dps = find(scenario="layer", stack="dps", members=row["members"])
            print(
                f"{row['members']:>8} {row['stack']:<13} {row['deliveries_per_s']:>13,.0f} {row['lost']:>6} "
                f"{row['redis_commands_per_publish']:>9.1f} {row['redis_bytes_per_publish']:>10,.0f} "
                f"{ratio(dps and dps['deliveries_per_s'], row['deliveries_per_s']):>10}"
            )
    if "e2e" in ran:
        print("\n== end to end (2 daphne nodes, one publisher) ==")
        print(
            f"{'clients':>7} {'mode':<10} {'stack':<13} {'deliv/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
            f"{'lost':>6} {'µs CPU/deliv':>12} {'DPS ratio':>10}"
        )
        for row in [r for r in rows if r["scenario"] == "e2e"]:
            dps = find(scenario="e2e", stack="dps", mode=row["mode"], clients=row["clients"])
            better = (
                ratio(dps and dps["deliveries_per_s"], row["deliveries_per_s"])
                if row["mode"] == "burst"
                else ratio(row["p99_ms"], dps and dps["p99_ms"])
            )
            print(
                f"{row['clients']:>7} {row['mode']:<10} {row['stack']:<13} {row['deliveries_per_s']:>9,.0f} "
                f"{row['p50_ms'] or 0:>7.0f} {row['p99_ms'] or 0:>7.0f} {row['max_ms'] or 0:>7.0f} {row['lost']:>6} "
                f"{row['daphne_cpu_us_per_delivery'] or 0:>12.0f} {better:>10}"
            )
        print("   (DPS ratio: burst = DPS deliveries/s over this stack's; paced = this stack's p99 over DPS's)")
    if "cores" in ran:
        print("\n== node processes sharing one port (DPS, burst) ==")
        print(
            f"{'clients':>7} {'processes':>9} {'deliv/s':>9} {'p99 ms':>7} {'lost':>6} {'µs CPU/deliv':>12} {'vs 1':>6}  sockets"
        )
        for row in [r for r in rows if r["scenario"] == "cores"]:
            one = find(scenario="cores", processes=1, clients=row["clients"])
            print(
                f"{row['clients']:>7} {row['processes']:>9} {row['deliveries_per_s']:>9,.0f} {row['p99_ms'] or 0:>7.0f} "
                f"{row['lost']:>6} {row['daphne_cpu_us_per_delivery'] or 0:>12.0f} "
                f"{ratio(row['deliveries_per_s'], one and one['deliveries_per_s']):>6}  {row['connections_per_process']}"
            )
    if "storm" in ran:
        print("\n== connect storm ==")
        for row in [r for r in rows if r["scenario"] == "storm"]:
            print(
                f"{row['stack']:<13} {row['handshakes']} handshakes: {row['failures']} failed, {row['seconds']:.2f} s"
            )
    if "memory" in ran:
        print("\n== idle memory (one node) ==")
        for row in [r for r in rows if r["scenario"] == "memory"]:
            print(f"{row['stack']:<13} {row['connections']} connections: {row['kb_per_connection']:.1f} KB RSS each")
    chat.print_report(rows)
    presence.print_report(rows)
    history_cost.print_report(rows)
    scaleout.print_report(rows)
    fencing_cost.print_report(rows)
    chaos.print_report(rows)


def plot(rows, path: Path) -> bool:
    """One panel per scenario that has a curve (layer, end to end, chat); False if there is none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for scenario, title, xlabel, x, keep in (
        ("layer", "layer fan-out, 2 node processes", "group members", "members", lambda r: True),
        ("e2e", "end to end burst, 2 daphne nodes", "websocket subscribers", "clients", lambda r: r["mode"] == "burst"),
    ):
        curves = {}
        for r in rows:
            if r["scenario"] == scenario and keep(r):
                curves.setdefault(r["stack"], []).append((r[x], r["deliveries_per_s"]))
        if curves:
            panels.append((title, xlabel, curves))
    with_chat = any(r["scenario"] == "chat" for r in rows)
    if not panels and not with_chat:
        return False
    count = len(panels) + with_chat
    figure, axes = plt.subplots(1, count, figsize=(6 * count, 4.5), squeeze=False)
    for axis, (title, xlabel, curves) in zip(axes[0], panels, strict=False):
        for name, points in curves.items():
            axis.plot(*zip(*sorted(points), strict=True), marker="o", label=name)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(title)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("deliveries/s")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    if with_chat:
        chat.plot(axes[0][-1], rows)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, about 5 minutes (chat alone: about 3)")
    parser.add_argument(
        "--only",
        help="comma-separated scenarios: layer,e2e,cores,storm,memory,chat,presence,history,scaleout,fencing "
        "(the default), and chaos",
    )
    parser.add_argument(
        "--stacks", help="comma-separated end-to-end stacks (default: dps,stock-pubsub,stock-core,floor)"
    )
    parser.add_argument(
        "--fencing-before", default=fencing_cost.BEFORE, help="the commit whose owners 'fencing' compares against"
    )
    parser.add_argument("--clients", help="comma-separated end-to-end client counts (default: 1000,5000,10000)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit: 10,000 sockets need it
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dps_site.settings")
    scenarios = set((args.only or "layer,e2e,cores,storm,memory,chat,presence,history,scaleout,fencing").split(","))
    unknown = scenarios - {
        "layer",
        "e2e",
        "cores",
        "storm",
        "memory",
        "chat",
        "presence",
        "history",
        "scaleout",
        "fencing",
        "chaos",
    }
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}")
    layer_stacks = ["dps", "stock-pubsub", "stock-core"]
    e2e_stacks = ["dps", "stock-pubsub", "stock-core", "floor"]
    if args.quick:
        sizes, layer_publishes, client_counts, burst, paced, storm, idle = [1000], 10, [1000], 20, 20, 1000, 2000
    else:
        sizes, layer_publishes, client_counts, burst, paced, storm, idle = (
            [100, 1000, 10_000],
            20,
            [1000, 5000, 10_000],
            50,
            40,
            1000,
            10_000,
        )
    if args.stacks:
        e2e_stacks = args.stacks.split(",")
        if set(e2e_stacks) - set(STACKS):
            parser.error(f"unknown stacks {sorted(set(e2e_stacks) - set(STACKS))}")
    cores_clients = [1000] if args.quick else [5000]
    if args.clients:
        client_counts = cores_clients = [int(n) for n in args.clients.split(",")]
    rows = []
    started = time.time()
    if "layer" in scenarios:
        rows += layer_scenario(layer_stacks, sizes, layer_publishes)
    if "e2e" in scenarios:
        for clients in client_counts:
            for name in e2e_stacks:
                rows += end_to_end(name, clients, burst if clients <= 1000 else burst // 2, paced)
    if "cores" in scenarios:
        for clients in cores_clients:
            for processes in (1, 2):
                rows += end_to_end("dps", clients, burst // 2, 0, nodes=processes, one_port=True)
    if "storm" in scenarios:
        rows += [connect_storm(name, storm) for name in ("dps", "stock-pubsub", "stock-core")]
    if "memory" in scenarios:
        rows += [idle_memory(name, idle) for name in ("dps", "stock-pubsub")]
    if "chat" in scenarios:
        rows += chat.run(["dps", "stock-pubsub", "stock-core"], args.quick)
    if "presence" in scenarios:
        for members in [1000] if args.quick else [1000, 10_000]:
            log(f"presence: {members} members joining at once")
            stack = Stack("dps", nodes=0)
            try:
                rows.append(presence.run(stack.redis.url, members))
            finally:
                stack.stop()
    if "history" in scenarios:
        for size in (0, 100):
            log(f"history: cost per publish with DPS_HISTORY_SIZE={size}")
            rows.append(history_cost.run(size))
    if "scaleout" in scenarios:
        for kind in ("redis", "redis-cluster"):
            log(f"scale-out: the chat publishes on {kind}")
            rows.append(scaleout.run(kind))
    if "fencing" in scenarios:
        log(f"fencing: cost per publish, the owners of {args.fencing_before} against today's")
        rows.extend(fencing_cost.run(args.fencing_before))
    if "chaos" in scenarios:
        rows.append(chaos.run(args.quick))
    print_report(rows)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {
        "quick": args.quick,
        "seconds": time.time() - started,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    (RESULTS / f"{stamp}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plotted = plot(rows, RESULTS / f"{stamp}.png")
    print(f"\nresults: bench/results/{stamp}.json{' and .png' if plotted else ''} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
