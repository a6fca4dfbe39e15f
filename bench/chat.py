"""Scenario 6, the chat workload: many rooms, every member publishing at random, on every stack in one run.

C clients in rooms of k plus one big room of B, spread over the 2 daphne nodes, held by a few client
processes (each with many sockets) so the load generator is not what gets measured. Every client
publishes as a Poisson process (exponential gaps). Small-room clients each publish at rate r and
big-room clients at r*k/B, so every room is equally chatty and the big room only has more listeners.
Each publish carries a unique id, the step number and its send time; from them come offered and
achieved publishes/s (achieved = ok replies per second), deliveries/s, publish-to-delivery latency,
error replies with their reasons, lost messages (ok'd but not delivered to every member of the room
within a bounded drain after the step) and duplicates.

The offered rate goes up a fixed ladder of short steps until the stack saturates (achieved < 90% of
what was sent, p99 over 2 s, errors, losses or closed sockets); the highest step that passed is the
stack's sustained publishes/s. A separate join storm opens many sockets at once, each joining one of many rooms.
"""

from __future__ import annotations

import time
from array import array
from collections import Counter
from dataclasses import dataclass

import psutil

from bench.chat_clients import call_all, connect_clients, start_clients
from bench.logs import log
from bench.stacks import Stack

MAX_P99_MS = 2000
MIN_ACHIEVED = 0.9


@dataclass(frozen=True)
class Plan:
    clients: int  # in rooms of room_size
    room_size: int
    big_room: int  # one more room with this many more clients
    ladder: tuple[int, ...]  # offered publishes/s, all clients together; the first is the normal load
    step_seconds: float
    drain_seconds: float  # after a step, how long a message may take before it counts as lost
    processes: int  # client processes
    storm_clients: int
    storm_rooms: int
    storm_processes: int


QUICK = Plan(400, 10, 100, (100, 200, 350, 600, 1000, 1600, 2500, 3500, 5000, 7000), 8, 8, 2, 1000, 100, 2)
FULL = Plan(2000, 10, 1000, (200, 400, 700, 1000, 1500, 2200, 3300, 5000, 7000), 8, 10, 4, 5000, 500, 4)


# The parent side


def chat_ladder(name: str, plan: Plan) -> list[dict]:
    log(
        f"chat: {name}, {plan.clients} clients in rooms of {plan.room_size} + a room of {plan.big_room}, "
        f"ladder {list(plan.ladder)} publishes/s"
    )
    members = [(n, f"chat:{n // plan.room_size}", 1.0) for n in range(plan.clients)]
    weight = plan.room_size / plan.big_room
    members += [(plan.clients + n, "chat:big", weight) for n in range(plan.big_room)]
    stack = Stack(name)
    clients = []
    rows = []
    try:
        clients = start_clients(stack.urls(), members, plan.processes)
        setup = connect_clients(clients, batch=50, timeout=30)
        join_failures = sum(setup["failures"].values())
        log(f"  {setup['joined']} joined in {setup['seconds']:.1f} s, {join_failures} failed {setup['failures']}")
        sizes = dict(setup["rooms"])
        call_all(clients, "rooms", sizes)
        for number, offered in enumerate(plan.ladder, 1):
            if not setup["weight"]:
                break
            row = _step(stack, clients, sizes, number, offered, offered / setup["weight"], plan)
            row.update(
                stack=name,
                clients=len(members),
                joined=setup["joined"],
                join_failures=setup["failures"],
                room_size=plan.room_size,
                big_room=plan.big_room,
            )
            rows.append(row)
            log(
                f"  step {number}: offered {offered}/s, ok {row['ok_per_s']:,.0f}/s, "
                f"{row['deliveries_per_s']:,.0f} deliveries/s, p99 {row['p99_ms'] or 0:,.0f} ms, "
                f"errors {row['error_count']} {row['errors']}, lost {row['lost']}, dup {row['duplicates']}, "
                f"closed {row['closed']}, server {row['server_cores']:.2f} cores, clients {row['client_cores']:.2f}"
                + (f" -> saturated: {', '.join(row['saturated'])}" if row["saturated"] else "")
            )
            if row["saturated"]:
                break
    finally:
        for client in clients:
            client.close()
        stack.stop()
    return rows


def _step(stack, clients, sizes, number, offered, rate_per_weight, plan) -> dict:
    start = time.time() + 0.3
    end = start + plan.step_seconds
    call_all(clients, "step", number, rate_per_weight, start, end)
    time.sleep(max(0.0, start - time.time()))
    server_before, clients_before = _server_cpu(stack), sum(c.cpu() for c in clients)
    time.sleep(max(0.0, end - time.time()))
    server_cores = (_server_cpu(stack) - server_before) / plan.step_seconds
    client_cores = (sum(c.cpu() for c in clients) - clients_before) / plan.step_seconds
    deadline = end + plan.drain_seconds
    while time.time() < deadline:
        polls = call_all(clients, "poll")
        if (
            not any(p["sending"] for p in polls)
            and sum(p["replied"] for p in polls) >= sum(p["sent"] for p in polls)
            and sum(p["deliveries"] for p in polls) >= sum(p["expected"] for p in polls)
        ):
            break
        time.sleep(0.2)
    drained = time.time() - end
    results = call_all(clients, "collect", timeout=120)
    ok: dict[int, str] = {}
    seen: Counter = Counter()
    errors: Counter = Counter()
    closed: Counter = Counter()
    latencies = array("f")
    for result in results:
        ok.update(result["ok"])
        seen.update(result["seen"])
        errors.update(result["errors"])
        closed.update(result["closed"])
        latencies.frombytes(result["latencies"])
    unanswered = [message for result in results for message in result["unanswered"]]
    lost = lost_deliveries = 0
    for message, room in ok.items():
        missing = sizes[room] - seen.get(message, 0)
        if missing > 0:
            lost += 1
            lost_deliveries += missing
    latencies = sorted(latencies)
    row = {
        "scenario": "chat",
        "step": number,
        "offered_per_s": offered,
        "sent_per_s": sum(r["sent_in_window"] for r in results) / plan.step_seconds,
        "ok_per_s": sum(r["ok_in_window"] for r in results) / plan.step_seconds,
        "deliveries_per_s": sum(r["deliveries_in_window"] for r in results) / plan.step_seconds,
        "publishes": sum(r["sent"] for r in results),
        "ok": len(ok),
        "error_count": sum(errors.values()),
        "errors": dict(errors.most_common()),
        "lost": lost,
        "lost_deliveries": lost_deliveries,
        "duplicates": sum(r["duplicates"] for r in results),
        "closed": sum(closed.values()),
        "close_reasons": dict(closed.most_common()),
        "stale": sum(r["stale"] for r in results),
        "unanswered_but_delivered": sum(1 for message in unanswered if seen.get(message)),
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "max_ms": 1000 * latencies[-1] if latencies else None,
        "max_send_lag_ms": 1000 * max(r["max_lag"] for r in results),
        "drain_s": drained,
        "server_cores": server_cores,
        "client_cores": client_cores,
    }
    row["saturated"] = _saturated(row)
    return row


def _saturated(row: dict) -> list[str]:
    reasons = []
    # Against what was sent (the Poisson draw of the offered rate), so sampling noise does not count.
    if row["ok_per_s"] < MIN_ACHIEVED * row["sent_per_s"]:
        reasons.append(f"ok/s < {MIN_ACHIEVED:.0%} of sent")
    if row["p99_ms"] is None or row["p99_ms"] > MAX_P99_MS:
        reasons.append(f"p99 > {MAX_P99_MS / 1000:g} s")
    if row["error_count"]:
        reasons.append("errors")
    if row["lost"]:
        reasons.append("lost")
    if row["closed"]:
        reasons.append("sockets closed")
    return reasons


def _server_cpu(stack: Stack) -> float:
    total = stack.daphne_cpu() + stack.topic_server_cpu()
    if stack.redis is not None:
        times = psutil.Process(stack.redis.process.pid).cpu_times()
        total += times.user + times.system
    return total


def saturation(rows: list[dict]) -> list[dict]:
    """One row per stack: the highest step that passed, and the first that did not."""
    result = []
    for name in dict.fromkeys(r["stack"] for r in rows if r["scenario"] == "chat"):
        steps = [r for r in rows if r["scenario"] == "chat" and r["stack"] == name]
        passed = [r for r in steps if not r["saturated"]]
        failed = next((r for r in steps if r["saturated"]), None)
        result.append(
            {
                "scenario": "chat-saturation",
                "stack": name,
                "sustained_ok_per_s": max((r["ok_per_s"] for r in passed), default=None),
                "sustained_offered_per_s": max((r["offered_per_s"] for r in passed), default=None),
                "saturated_at_offered_per_s": failed and failed["offered_per_s"],
                "saturated_because": failed and failed["saturated"],
                "peak_ok_per_s": max((r["ok_per_s"] for r in steps), default=None),
            }
        )
    return result


def join_storm(name: str, plan: Plan) -> dict:
    log(f"join storm: {name}, {plan.storm_clients} clients joining {plan.storm_rooms} rooms at once")
    # Client n uses node n % 2: clients 2m and 2m+1 share a room, so every room spans both nodes.
    members = [(n, f"storm:{(n // 2) % plan.storm_rooms}", 1.0) for n in range(plan.storm_clients)]
    stack = Stack(name)
    clients = []
    try:
        clients = start_clients(stack.urls(), members, plan.storm_processes)
        result = connect_clients(clients, batch=plan.storm_clients, timeout=30)
    finally:
        for client in clients:
            client.close()
        stack.stop()
    failed = sum(result["failures"].values())
    log(f"  {result['joined']} joined, {failed} failed {result['failures']}, {result['seconds']:.2f} s")
    return {
        "scenario": "join-storm",
        "stack": name,
        "clients": plan.storm_clients,
        "rooms": plan.storm_rooms,
        "joined": result["joined"],
        "failed": failed,
        "failures": result["failures"],
        "seconds": result["seconds"],
    }


def run(stacks: list[str], quick: bool) -> list[dict]:
    plan = QUICK if quick else FULL
    rows = []
    for name in stacks:
        rows += chat_ladder(name, plan)
    rows += saturation(rows)
    for name in stacks:
        rows.append(join_storm(name, plan))
    return rows


# The report


# The client processes
