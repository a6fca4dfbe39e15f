"""The chat workload's load generator: a few client processes, each holding many sockets (so the\ngenerator is not what gets measured), commanded over a pipe: connect, publish a step, drain, count."""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import random
import time
from array import array
from collections import Counter

import orjson
import psutil
import websockets

EVENT = "chat"
TEXT = "hello from the chat benchmark, a line of about sixty chars"
HEARTBEAT_SECONDS = 30  # as phoenix.js: DPS closes sockets that send nothing for DPS_IDLE_TIMEOUT (60 s)


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


def call_all(clients: list[ClientProcess], *command, timeout: float = 60) -> list:
    for client in clients:
        client.send(*command)
    deadline = time.monotonic() + timeout
    return [client.reply(max(0.1, deadline - time.monotonic())) for client in clients]


def start_clients(urls: list[str], members: list[tuple[int, str, float]], processes: int) -> list[ClientProcess]:
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


def connect_clients(clients, batch: int, timeout: float) -> dict:
    start = time.time() + 0.5
    replies = call_all(clients, "connect", start, batch, timeout, timeout=timeout * 4 + 60)
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
