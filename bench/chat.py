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

import asyncio
import itertools
import json
import multiprocessing
import random
import time
from array import array
from collections import Counter
from dataclasses import dataclass

import orjson
import psutil
import websockets

from bench.logs import log
from bench.stacks import Stack

EVENT = "chat"
TEXT = "hello from the chat benchmark, a line of about sixty chars"
HEARTBEAT_SECONDS = 30  # as phoenix.js: DPS closes sockets that send nothing for DPS_IDLE_TIMEOUT (60 s)
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


class ClientProcess:
    """One process holding many client sockets, driven by commands through a pipe."""

    def __init__(self, index: int, processes: int, members: list[tuple[str, str, float]]):
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=_run, args=(index, processes, members, child), daemon=True)
        self.process.start()

    def send(self, *command) -> None:
        self.pipe.send(command)

    def reply(self, timeout: float):
        if not self.pipe.poll(timeout):
            raise TimeoutError("client process did not answer")
        return self.pipe.recv()

    def call(self, *command, timeout: float = 60):
        self.send(*command)
        return self.reply(timeout)

    def cpu(self) -> float:
        try:
            times = psutil.Process(self.process.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return times.user + times.system

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.send("close")
            except OSError:
                pass
            self.process.join(20)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def _call_all(clients: list[ClientProcess], *command, timeout: float = 60) -> list:
    for client in clients:
        client.send(*command)
    deadline = time.monotonic() + timeout
    return [client.reply(max(0.1, deadline - time.monotonic())) for client in clients]


def _start(urls: list[str], members: list[tuple[int, str, float]], processes: int) -> list[ClientProcess]:
    """members: (client number, room, weight); client n uses node n % len(urls), process n % processes."""
    clients = []
    try:
        for index in range(processes):
            mine = [(urls[n % len(urls)], room, weight) for n, room, weight in members if n % processes == index]
            clients.append(ClientProcess(index, processes, mine))
        for client in clients:
            client.reply(60)  # started
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


def _connect(clients, batch: int, timeout: float) -> dict:
    start = time.time() + 0.5
    replies = _call_all(clients, "connect", start, batch, timeout, timeout=timeout * 4 + 60)
    failures = Counter()
    rooms = Counter()
    for reply in replies:
        failures.update(reply["failures"])
        rooms.update(reply["rooms"])
    last = max((r["last"] for r in replies if r["last"]), default=start)
    return {
        "joined": sum(r["joined"] for r in replies),
        "failures": dict(failures.most_common()),
        "rooms": rooms,
        "seconds": last - start,
        "weight": sum(r["weight"] for r in replies),
    }


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
        clients = _start(stack.urls(), members, plan.processes)
        setup = _connect(clients, batch=50, timeout=30)
        join_failures = sum(setup["failures"].values())
        log(f"  {setup['joined']} joined in {setup['seconds']:.1f} s, {join_failures} failed {setup['failures']}")
        sizes = dict(setup["rooms"])
        _call_all(clients, "rooms", sizes)
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
    _call_all(clients, "step", number, rate_per_weight, start, end)
    time.sleep(max(0.0, start - time.time()))
    server_before, clients_before = _server_cpu(stack), sum(c.cpu() for c in clients)
    time.sleep(max(0.0, end - time.time()))
    server_cores = (_server_cpu(stack) - server_before) / plan.step_seconds
    client_cores = (sum(c.cpu() for c in clients) - clients_before) / plan.step_seconds
    deadline = end + plan.drain_seconds
    while time.time() < deadline:
        polls = _call_all(clients, "poll")
        if (
            not any(p["sending"] for p in polls)
            and sum(p["replied"] for p in polls) >= sum(p["sent"] for p in polls)
            and sum(p["deliveries"] for p in polls) >= sum(p["expected"] for p in polls)
        ):
            break
        time.sleep(0.2)
    drained = time.time() - end
    results = _call_all(clients, "collect", timeout=120)
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
        clients = _start(stack.urls(), members, plan.storm_processes)
        result = _connect(clients, batch=plan.storm_clients, timeout=30)
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


def _ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "–"


def print_report(rows: list[dict]) -> None:
    steps = [r for r in rows if r["scenario"] == "chat"]
    if steps:
        first = steps[0]
        print(
            f"\n== chat ({first['clients'] - first['big_room']} clients in rooms of {first['room_size']} "
            f"+ one room of {first['big_room']}, 2 daphne nodes, Poisson publishers) =="
        )
        print(
            f"{'stack':<13} {'offered/s':>9} {'sent/s':>7} {'ok/s':>7} {'deliv/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'errors':>6} {'lost':>5} {'dup':>4} {'closed':>6} {'srv/gen cores':>13} {'p99 ratio':>9}  saturated"
        )
        for row in steps:
            dps = next((r for r in steps if r["stack"] == "dps" and r["offered_per_s"] == row["offered_per_s"]), None)
            print(
                f"{row['stack']:<13} {row['offered_per_s']:>9,} {row['sent_per_s']:>7,.0f} {row['ok_per_s']:>7,.0f} "
                f"{row['deliveries_per_s']:>8,.0f} {row['p50_ms'] or 0:>7,.0f} {row['p99_ms'] or 0:>7,.0f} "
                f"{row['error_count']:>6} {row['lost']:>5} {row['duplicates']:>4} {row['closed']:>6} "
                f"{row['server_cores']:>6.2f}/{row['client_cores']:<6.2f} "
                f"{_ratio(row['p99_ms'], dps and dps['p99_ms']):>9}  {', '.join(row['saturated'])}"
            )
            if row["errors"]:
                print(f"{'':<13} error replies: {row['errors']}")
            if row["close_reasons"]:
                print(f"{'':<13} sockets closed: {row['close_reasons']}")
        print("   (p99 ratio: this stack's p99 over DPS's at the same offered load)")
        sat = {r["stack"]: r for r in rows if r["scenario"] == "chat-saturation"}
        print("\n   sustained publishes/s (highest step that passed) and where it saturated:")
        for name, row in sat.items():
            sustained = row["sustained_ok_per_s"]
            print(
                f"   {name:<13} {sustained or 0:>7,.0f}/s  "
                f"{'DPS ' + _ratio(sat.get('dps', {}).get('sustained_ok_per_s'), sustained) if name != 'dps' else '':<10}"
                + (
                    f" saturated at {row['saturated_at_offered_per_s']:,}/s offered: {', '.join(row['saturated_because'])}"
                    if row["saturated_at_offered_per_s"]
                    else " not saturated by the ladder"
                )
            )
        _print_targets(steps, sat)
    storms = [r for r in rows if r["scenario"] == "join-storm"]
    if storms:
        first = storms[0]
        print(f"\n== join storm ({first['clients']} clients joining {first['rooms']} rooms at once, 2 nodes) ==")
        dps = next((r for r in storms if r["stack"] == "dps"), None)
        for row in storms:
            faster = row is not dps and not row["failed"] and dps and not dps["failed"]
            print(
                f"{row['stack']:<13} {row['joined']:>6} joined, {row['failed']:>5} failed, {row['seconds']:>6.2f} s "
                f"{'DPS ' + _ratio(row['seconds'], dps['seconds']) + ' faster' if faster else '':<17}"
                f" {row['failures'] or ''}"
            )
        print("   (seconds: from the common start until the last successful join)")


def plot(axis, rows: list[dict]) -> None:
    """Achieved (ok) publishes/s against offered, one line per stack; a saturated step is an x."""
    steps = [r for r in rows if r["scenario"] == "chat"]
    for name in dict.fromkeys(r["stack"] for r in steps):
        mine = [r for r in steps if r["stack"] == name]
        line = axis.plot([r["offered_per_s"] for r in mine], [r["ok_per_s"] for r in mine], marker="o", label=name)
        failed = [r for r in mine if r["saturated"]]
        axis.plot(
            [r["offered_per_s"] for r in failed],
            [r["ok_per_s"] for r in failed],
            "x",
            markersize=12,
            color=line[0].get_color(),
        )
    offered = sorted({r["offered_per_s"] for r in steps})
    axis.plot(offered, offered, ":", color="grey", label="offered")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_title("chat: publishes/s achieved (x: saturated)")
    axis.set_xlabel("offered publishes/s")
    axis.set_ylabel("ok replies/s")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()


def _print_targets(steps, sat) -> None:
    def by_offered(name):
        return {r["offered_per_s"]: r for r in steps if r["stack"] == name}

    dps = by_offered("dps")
    if not dps:
        return
    print("\n   targets:")
    survived = {o for name in ("stock-pubsub", "stock-core") for o, r in by_offered(name).items() if not r["saturated"]}
    clean = [o for o in sorted(survived) if o in dps and (dps[o]["error_count"] or dps[o]["lost"])]
    print(
        f"   {'met' if not clean else 'MISSED':<6} DPS 0 errors and 0 lost at every load a stock stack survives"
        + (f" (not at {clean})" if clean else f" ({len(survived)} loads)")
    )
    pubsub = by_offered("stock-pubsub")
    common = sorted(o for o in pubsub if o in dps)
    worse = [o for o in common if (dps[o]["p99_ms"] or 1e9) > (pubsub[o]["p99_ms"] or 1e9)]
    print(
        f"   {'met' if common and not worse else 'MISSED':<6} DPS p99 <= stock-pubsub's at the same offered load"
        + (f" (not at {worse})" if worse else f" ({len(common)} loads)")
    )
    mine, theirs = (sat.get(n, {}).get("sustained_ok_per_s") for n in ("dps", "stock-pubsub"))
    print(
        f"   {'met' if mine and theirs and mine >= 1.5 * theirs else 'MISSED':<6} DPS sustained publishes/s "
        f">= 1.5x stock-pubsub's ({_ratio(mine, theirs)})"
    )


# The client processes


def _run(index: int, processes: int, members: list[tuple[str, str, float]], pipe) -> None:
    asyncio.run(_Clients(index, processes, members, pipe).main())


class _Refused(Exception):
    pass


class _Member:
    __slots__ = ("ws", "room", "join_ref", "weight", "seen")

    def __init__(self, ws, room, join_ref, weight):
        self.ws, self.room, self.join_ref, self.weight = ws, room, join_ref, weight
        self.seen: set[int] = set()


class _Step:
    def __init__(self, number: int, start: float, end: float):
        self.number, self.start, self.end = number, start, end
        self.sent = self.sent_in_window = 0
        self.pending: dict[str, tuple[int, str]] = {}  # ref -> (id, room)
        self.ok: dict[int, str] = {}
        self.ok_in_window = 0
        self.errors: Counter = Counter()
        self.replied = 0
        self.expected = 0  # deliveries owed for the ok'd messages
        self.seen: Counter = Counter()  # id -> members of this process that got it
        self.deliveries = self.deliveries_in_window = self.duplicates = 0
        self.latencies = array("f")
        self.max_lag = 0.0


def _reason(error: BaseException) -> str:
    if isinstance(error, websockets.InvalidStatus):
        return f"handshake: HTTP {error.response.status_code}"
    if isinstance(error, websockets.ConnectionClosed):
        return f"closed {error.rcvd.code if error.rcvd else 'without a close frame'}"
    if isinstance(error, TimeoutError):
        return "timeout"
    return f"{type(error).__name__}: {error}"[:100]


class _Clients:
    def __init__(self, index, processes, plan, pipe):
        self.index, self.processes, self.plan, self.pipe = index, processes, plan, pipe
        self.members: list[_Member] = []
        self.sizes: dict[str, int] = {}
        self.step: _Step | None = None
        self.closed: Counter = Counter()
        self.closing = False
        self.stale = 0
        self.ids = itertools.count(1)
        self.tasks: set[asyncio.Task] = set()
        self.random = random.Random()

    async def main(self) -> None:
        self.pipe.send("started")
        loop = asyncio.get_running_loop()
        while True:
            command, *args = await loop.run_in_executor(None, self.pipe.recv)
            if command == "close":
                break
            self.pipe.send(await getattr(self, "do_" + command)(*args))
        self.closing = True
        await asyncio.gather(*(m.ws.close() for m in self.members), return_exceptions=True)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # Setup

    async def do_connect(self, start: float, batch: int, timeout: float) -> dict:
        await asyncio.sleep(max(0.0, start - time.time()))
        failures: Counter = Counter()
        last = 0.0
        for first in range(0, len(self.plan), batch):
            chunk = self.plan[first : first + batch]
            results = await asyncio.gather(
                *(self._open(str(first + n), *member, timeout) for n, member in enumerate(chunk)),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    failures[_reason(result)] += 1
                else:
                    self.members.append(result)
                    last = max(last, time.time())
        for member in self.members:
            self._spawn(self._read(member))
        self._spawn(self._heartbeats())
        self.weights = list(itertools.accumulate(m.weight for m in self.members))
        return {
            "joined": len(self.members),
            "failures": dict(failures),
            "last": last,
            "rooms": Counter(m.room for m in self.members),
            "weight": self.weights[-1] if self.weights else 0.0,
        }

    async def _open(self, join_ref, url, room, weight, timeout) -> _Member:
        ws = await websockets.connect(
            url, max_queue=None, open_timeout=timeout, ping_interval=None, close_timeout=2, compression=None
        )
        try:
            await ws.send(json.dumps([join_ref, join_ref, room, "phx_join", {}]))
            reply = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
            if reply[3] != "phx_reply" or reply[4].get("status") != "ok":
                raise _Refused(f"join refused: {reply[3]} {reply[4]}"[:100])
        except BaseException:
            await ws.close()
            raise
        return _Member(ws, room, join_ref, weight)

    async def do_rooms(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes

    # Reading

    async def _read(self, member: _Member) -> None:
        try:
            async for text in member.ws:
                now = time.time()
                frame = orjson.loads(text)
                step = self.step
                if frame[1] is None:
                    payload = frame[4]
                    if step is None or frame[3] != EVENT or payload.get("s") != step.number:
                        self.stale += 1
                        continue
                    message = payload["id"]
                    if message in member.seen:
                        step.duplicates += 1
                        continue
                    member.seen.add(message)
                    step.seen[message] += 1
                    step.deliveries += 1
                    if now <= step.end:
                        step.deliveries_in_window += 1
                    step.latencies.append(now - payload["t"])
                elif frame[3] == "phx_reply" and step is not None:
                    sent = step.pending.pop(frame[1], None)
                    if sent is None:
                        continue  # a heartbeat's, or of an earlier step
                    step.replied += 1
                    status = frame[4].get("status")
                    if status == "ok":
                        step.ok[sent[0]] = sent[1]
                        step.expected += self.sizes.get(sent[1], 0)
                        if now <= step.end:
                            step.ok_in_window += 1
                    else:
                        step.errors[f"{status}: {frame[4].get('response', {}).get('reason')}"] += 1
            if not self.closing:
                self.closed[f"closed {member.ws.close_code}"] += 1
        except websockets.ConnectionClosed as error:
            if not self.closing:
                self.closed[_reason(error)] += 1

    # Publishing

    async def do_step(self, number: int, rate_per_weight: float, start: float, end: float) -> None:
        self.step = step = _Step(number, start, end)
        for member in self.members:
            member.seen.clear()
        if self.members:
            self.sender = asyncio.ensure_future(self._send_loop(step, rate_per_weight * self.weights[-1]))

    async def _send_loop(self, step: _Step, rate: float) -> None:
        await asyncio.sleep(max(0.0, step.start - time.time()))
        due = step.start
        while True:
            due += self.random.expovariate(rate)
            now = time.time()
            if due >= step.end or now > step.end + 1:  # bounded in count and in time
                break
            if due - now > 0.001:
                await asyncio.sleep(due - now)
            else:
                step.max_lag = max(step.max_lag, now - due)
                if step.sent % 50 == 0:
                    await asyncio.sleep(0)  # let the readers run when behind
            member = self.random.choices(self.members, cum_weights=self.weights)[0]
            message = next(self.ids) * self.processes + self.index
            sent = time.time()
            text = orjson.dumps(
                [
                    member.join_ref,
                    str(message),
                    member.room,
                    "publish",
                    [EVENT, {"id": message, "s": step.number, "t": sent, "text": TEXT}],
                ]
            ).decode()
            step.pending[str(message)] = (message, member.room)
            step.sent += 1
            if sent <= step.end:
                step.sent_in_window += 1
            self._spawn(self._send(member, text, step, str(message)))

    async def _send(self, member: _Member, text: str, step: _Step, ref: str) -> None:
        try:
            await member.ws.send(text)
        except websockets.ConnectionClosed:
            if step.pending.pop(ref, None) is not None:
                step.replied += 1
                step.errors["not sent: socket closed"] += 1

    async def _heartbeats(self) -> None:
        refs = itertools.count()
        phase = 0
        while True:
            await asyncio.sleep(1)
            phase = (phase + 1) % HEARTBEAT_SECONDS
            for member in self.members[phase::HEARTBEAT_SECONDS]:
                text = json.dumps([None, f"h{next(refs)}", "phoenix", "heartbeat", {}])
                self._spawn(self._quiet_send(member.ws, text))

    @staticmethod
    async def _quiet_send(ws, text: str) -> None:
        try:
            await ws.send(text)
        except websockets.ConnectionClosed:
            pass

    async def do_poll(self) -> dict:
        step = self.step
        sender = getattr(self, "sender", None)
        return {
            "sent": step.sent,
            "replied": step.replied,
            "deliveries": step.deliveries,
            "expected": step.expected,
            # A sender running behind its schedule may still send the step's last publishes.
            "sending": sender is not None and not sender.done(),
        }

    async def do_collect(self) -> dict:
        step, self.step = self.step, None
        sender = getattr(self, "sender", None)
        if sender is not None:
            await asyncio.wait([sender], timeout=5)
        if step.pending:
            step.errors["no reply within the drain"] += len(step.pending)
        closed, self.closed = self.closed, Counter()
        stale, self.stale = self.stale, 0
        return {
            "sent": step.sent,
            "sent_in_window": step.sent_in_window,
            "ok": step.ok,
            "ok_in_window": step.ok_in_window,
            "errors": dict(step.errors),
            "seen": dict(step.seen),
            "deliveries_in_window": step.deliveries_in_window,
            "duplicates": step.duplicates,
            "latencies": step.latencies.tobytes(),
            "max_lag": step.max_lag,
            "closed": dict(closed),
            "stale": stale,
            "unanswered": [message for message, _ in step.pending.values()],
        }
