"""The dpsverify workload: real Phoenix sockets against a running DPS, and what they saw.

Subscribers (one socket each) join with ``{"recover": true}`` by default, so each broadcast's ref
carries the owner's ``"<epoch>:<seq>"`` (pubsub/socket/recovery.py): the order is checked against the
owner's numbers. A subscriber whose socket closes reconnects to the next URL and rejoins with
``{"recover": {"epoch": E, "seq": N}}`` (its last message); a ``phx_error`` on its topic (the node
lost messages it could not fill) makes it rejoin on the same socket, as phoenix.js does. The
server answers ``recovered: true`` (the missed messages follow) or ``false``: then the gap is
recorded as excused (checker.Gap). Without recovery (``recover=False``) a subscriber joins with
``{}`` and one that has to rejoin is promised nothing more (checker.Subscriber.counted).

Publishers send ``["v", {"id": N}]`` to ``publish`` on topics they joined, spread over enough
sockets to stay under the per-socket rate limit (pubsub/verification/plan.py); one whose socket
closes reconnects to the next URL and rejoins; what it would have sent meanwhile is not sent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from pubsub.verification.checker import Publish, Subscriber, outstanding
from pubsub.verification.plan import Plan, make_plan, socket_url
from pubsub.verification.sockets import EVENT, CannotConnect, PublisherSocket, SubscriberSocket, why

__all__ = ["EVENT", "Options", "CannotConnect", "Workload"]

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY = 25.0  # DPS closes a socket after DPS_IDLE_TIMEOUT (60 s) without a frame
SETTLE_POLL = 0.2
DUPLICATE_WATCH = 0.5  # after everything arrived, how long repeats are given to show up
START_CONCURRENCY = 50  # sockets opened at once at the start


@dataclass
class Options:
    urls: list[str]
    topics: int = 20
    subscribers: int = 100
    rate: float = 50.0  # publishes per second, all publishers together
    duration: float = 20.0
    settle: float = 10.0  # at most this long after the last publish for replies and deliveries
    recover: bool = True
    socket_rate: float = 40.0  # publishes per second per publisher socket, at most
    connect_timeout: float = 5.0
    topic_prefix: str = "verify"
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))


class Workload:
    """One run: start every socket, publish for the duration, settle, stop; the records are
    ``publishes`` and ``subscriber_records()``."""

    def __init__(self, options: Options, say: Callable[[str], None] = print):
        self.options = options
        self.say = say
        self.urls = [socket_url(url) for url in options.urls]
        self.plan: Plan = make_plan(
            options.topics, options.subscribers, len(self.urls), options.rate, options.socket_rate
        )
        self.topics = [f"{options.topic_prefix}:{options.run_id}:{t}" for t in range(options.topics)]
        total = max(1, round(options.rate * options.duration))
        self.publishes = [Publish(k, self.topics[self.plan.route(k)[0]]) for k in range(total)]
        self.subscribers = [SubscriberSocket(self, self.topics[t], url) for t, url in self.plan.subscribers]
        self.publishers = [PublisherSocket(self, plan) for plan in self.plan.publishers]
        self.clock = time.monotonic
        self.started_at = self.clock()
        self.stopping = False
        self.stats: dict[str, int] = dict.fromkeys(
            [
                "subscriber reconnects",
                "recovered",
                "recoveries refused",
                "rejoined without recovery",
                "publisher reconnects",
            ],
            0,
        )
        self._tasks: set[asyncio.Task] = set()

    def keep(self, coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def sent_at(self, id_: int) -> float:
        return self.publishes[id_].sent_at or self.started_at

    async def open(self, url: int) -> ClientConnection:
        address = self.urls[url]
        timeout = self.options.connect_timeout
        try:
            return await connect(
                address, open_timeout=timeout, max_queue=None, compression=None, close_timeout=2, max_size=2**22
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise CannotConnect(f"cannot connect to {address}: {why(exc, timeout)}") from None

    def subscriber_records(self) -> list[Subscriber]:
        return [subscriber.record for subscriber in self.subscribers]

    async def run(self) -> None:
        """Raises CannotConnect if the sockets cannot all be opened and joined at the start."""
        options = self.options
        recover = "with recover" if options.recover else "without recover"
        self.say(
            f"dpsverify: run {options.run_id}: {len(self.subscribers)} subscribers ({recover}) on {options.topics} "
            f"topics over {len(self.urls)} URLs; {len(self.publishers)} publisher sockets, at most "
            f"{self.plan.socket_rate(options.rate):.1f} publishes/s each"
        )
        try:
            await self._start_all()
            self.keep(self._heartbeats())
            self.say(
                f"dpsverify: publishing {len(self.publishes)} ids at {options.rate:g}/s for {options.duration:g} s"
            )
            await self._publish_all()
            self.say(f"dpsverify: published; waiting at most {options.settle:g} s for replies and deliveries")
            settled = await self._settle()
            self.say(f"dpsverify: settled in {settled:.1f} s" if settled is not None else "dpsverify: settle wait over")
        finally:
            await self._stop()
        stats = {name: count for name, count in self.stats.items() if count}
        if stats:
            self.say("dpsverify: " + ", ".join(f"{name} {count}" for name, count in stats.items()))

    async def _start_all(self) -> None:
        limit = asyncio.Semaphore(START_CONCURRENCY)

        async def start(client):
            async with limit:
                await client.start()

        results = await asyncio.gather(
            *(start(c) for c in [*self.subscribers, *self.publishers]), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _publish_all(self) -> None:
        rate, started = self.options.rate, self.clock()
        k, total = 0, len(self.publishes)
        while k < total:
            due = min(total, int((self.clock() - started) * rate) + 1)
            for n in range(k, due):
                self.publishers[self.plan.route(n)[1]].publish(self.publishes[n])
            k = due
            await asyncio.sleep(max(0.0, started + k / rate - self.clock()))

    async def _settle(self) -> float | None:
        """Seconds until every reply and every owed delivery was in (None: not within the settle time)."""
        started = self.clock()
        while self.clock() - started < self.options.settle:
            unanswered = sum(len(publisher.pending) for publisher in self.publishers)
            repairing = any(s.reconnecting or not s.joined for s in self.subscribers)
            if not unanswered and not repairing and not outstanding(self.publishes, self.subscriber_records()):
                took = self.clock() - started
                await asyncio.sleep(DUPLICATE_WATCH)
                return took
            await asyncio.sleep(SETTLE_POLL)
        return None

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            for client in [*self.subscribers, *self.publishers]:
                client.send([None, "hb", "phoenix", "heartbeat", {}])

    async def _stop(self) -> None:
        self.stopping = True
        for subscriber in self.subscribers:
            if not subscriber.joined:
                subscriber.record.counted = False  # no join at the end: promised nothing more
        clients = [*self.subscribers, *self.publishers]
        for client in clients:
            if client.repair is not None:
                client.repair.cancel()
        await asyncio.gather(*(c.ws.close() for c in clients if c.ws is not None), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
