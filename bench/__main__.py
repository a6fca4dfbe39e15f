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
import json
import os
import resource
import sys
import time
from pathlib import Path

from bench import chaos, chat, fencing_cost, history_cost, presence, scaleout
from bench.end_to_end import connect_storm, end_to_end, idle_memory, layer_scenario, longpoll_memory
from bench.logs import log
from bench.report import plot, print_report
from bench.stacks import STACKS, Stack

RESULTS = Path(__file__).parent / "results"
# Scenario 1


# Scenarios 2 and 5


# Scenario 3


# Scenario 4


# Report


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
        rows.append(longpoll_memory(idle))
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
