"""dpsverify's sockets: subscribers that join (with recovery), record what arrives and rejoin after a\nclose or an error, and publishers that send ids and record each reply; each reconnects to the\nnext URL when its socket closes."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pubsub.verification.checker import ACCEPTED, REFUSED, UNSENT, Delivery, Gap, Publish, Subscriber
from pubsub.verification.plan import PublisherPlan

logger = logging.getLogger("pubsub.verification.workload")

EVENT = "v"  # the broadcast event the publishers send


JOIN_TIMEOUT = 10.0


RETRY_DELAYS = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0)  # between reconnect attempts, then the last again


class CannotConnect(Exception):
    """A socket could not be opened or joined at the start: the run cannot begin."""


class Run(Protocol):
    """What a socket uses of the run it belongs to (pubsub/verification/workload.py's Workload)."""

    options: Any
    urls: list[str]
    topics: list[str]
    stats: dict[str, int]
    stopping: bool
    started_at: float
    clock: Callable[[], float]

    def keep(self, coroutine) -> asyncio.Task: ...

    def sent_at(self, id_: int) -> float: ...

    async def open(self, url: int) -> ClientConnection: ...


class _Broken(Exception):
    """A join that got no answer: its socket closed, or the reply did not come in time."""


def _encode(frame: list) -> str:
    return orjson.dumps(frame).decode()


def _numbers(ref) -> tuple[str | None, int | None]:
    """(epoch, seq) from a recovering join's broadcast ref ``"<epoch>:<seq>"``, else (None, None)."""
    if isinstance(ref, str) and ":" in ref:
        epoch, _, seq = ref.rpartition(":")
        if seq.isdigit():
            return epoch, int(seq)
    return None, None


def why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code} instead of a websocket (is this a DPS socket endpoint?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is DPS running there?)"
    return str(exc) or type(exc).__name__


class _Socket:
    """What subscribers and publishers share: their socket, its reader and its fire-and-forget sends."""

    def __init__(self, workload: Run, url: int):
        self.workload = workload
        self.url = url
        self.ws: ClientConnection | None = None
        self.repair: asyncio.Task | None = None
        self.reconnecting = False

    async def open(self) -> None:
        self.ws = ws = await self.workload.open(self.url)
        self.workload.keep(self._read(ws))

    def send(self, frame: list) -> None:
        """Write now, in order (websockets writes before it waits for the buffer to drain)."""
        if self.ws is not None:
            self.workload.keep(self._send(self.ws, _encode(frame)))

    @staticmethod
    async def _send(ws: ClientConnection, text: str) -> None:
        try:
            await ws.send(text)
        except ConnectionClosed:
            pass  # its reader sees the close

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for text in ws:
                try:
                    frame = orjson.loads(text)
                except orjson.JSONDecodeError:
                    logger.warning("dpsverify: a frame that is not JSON: %.80s", text)
                    continue
                if isinstance(frame, list) and len(frame) >= 5:
                    self.on_frame(*frame[:5])
        except ConnectionClosed:
            pass
        finally:
            self.on_closed(ws)

    def on_frame(self, join_ref, ref, topic, event, payload) -> None:
        raise NotImplementedError

    def on_closed(self, ws: ClientConnection) -> None:
        if ws is not self.ws or self.workload.stopping or self.reconnecting:
            return
        if self.repair is not None:
            self.repair.cancel()
        self.reconnecting = True  # now: until the new socket is joined, its own close is the loop's
        self.repair = asyncio.ensure_future(self._reconnect())

    async def rejoin(self) -> None:
        raise NotImplementedError

    async def _reconnect(self) -> None:
        """The next URL, then the next, until a socket is open and joined again (or the run ends)."""
        self.workload.stats[f"{self.kind} reconnects"] += 1
        try:
            for attempt in itertools.count():
                if self.workload.stopping:
                    return
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                self.url = (self.url + 1) % len(self.workload.urls)
                try:
                    await self.open()
                except CannotConnect:
                    continue
                try:
                    await self.rejoin()
                    return
                except _Broken:
                    await self.ws.close()
        finally:
            self.reconnecting = False


class SubscriberSocket(_Socket):
    kind = "subscriber"

    def __init__(self, workload: Run, topic: str, url: int):
        super().__init__(workload, url)
        self.topic = topic
        self.record = Subscriber(topic)
        self.join_ref: str | None = None
        self.joins = 0
        self.joined = False
        self.joined_at = 0.0
        self.position: tuple[str, int] | None = None  # (epoch, seq) of the last message, recovering
        self.reply: asyncio.Future | None = None

    async def start(self) -> None:
        await self.open()
        try:
            await self._join()
        except _Broken as exc:
            raise CannotConnect(f"joining {self.topic} on {self.workload.urls[self.url]} failed: {exc}") from None

    async def rejoin(self) -> None:
        await self._join()

    def _params(self) -> dict:
        if not self.workload.options.recover:
            return {}
        if self.position is None:
            return {"recover": True}
        return {"recover": {"epoch": self.position[0], "seq": self.position[1]}}

    async def _join(self) -> None:
        self.joins += 1
        ref = self.join_ref = str(self.joins)  # broadcasts for a plain join may come before its reply
        self.reply = asyncio.get_running_loop().create_future()
        self.send([ref, ref, self.topic, "phx_join", self._params()])
        try:
            status, response = await asyncio.wait_for(self.reply, JOIN_TIMEOUT)
        except TimeoutError:
            raise _Broken("no reply to the join") from None
        if status != "ok":
            raise _Broken(f"join refused: {response}")

    def on_frame(self, join_ref, ref, topic, event, payload) -> None:
        if topic != self.topic:
            return
        if event == EVENT:
            if join_ref == self.join_ref and isinstance(payload, dict) and isinstance(payload.get("id"), int):
                epoch, seq = _numbers(ref)
                self.record.deliveries.append(Delivery(payload["id"], self.workload.clock(), epoch, seq))
                if seq is not None:
                    self.position = (epoch, seq)
        elif event == "phx_reply" and ref == self.join_ref and self.reply is not None and not self.reply.done():
            payload = payload if isinstance(payload, dict) else {}
            status, response = payload.get("status"), payload.get("response") or {}
            if status == "ok":
                self._joined(response)  # here, before any later frame of this socket is read
            self.reply.set_result((status, response))
        elif event in ("phx_error", "phx_close") and join_ref == self.join_ref and self.joined:
            self.joined = False  # the server ended this join: rejoin on the same socket, as phoenix.js
            if self.repair is None or self.repair.done():
                self.repair = asyncio.ensure_future(self._rejoin_here())

    def _joined(self, response: dict) -> None:
        first = not self.joined_at
        now = self.workload.clock()
        self.joined, self.joined_at = True, now
        epoch, seq = response.get("epoch"), response.get("seq")
        numbered = self.workload.options.recover and isinstance(epoch, str) and isinstance(seq, int)
        if first:
            self.position = (epoch, seq) if numbered else None
            return
        if not numbered or self.position is None:
            self.record.counted = False  # rejoined without recovery: promised nothing more
            self.workload.stats["rejoined without recovery"] += 1
        elif response.get("recovered") is True:
            self.workload.stats["recovered"] += 1
        else:  # the server says it cannot give back what came after our position
            last = self.record.deliveries[-1].id if self.record.deliveries else None
            since = self.workload.sent_at(last) if last is not None else self.workload.started_at
            self.record.gaps.append(Gap(self.position[0], self.position[1], epoch, seq, since, now))
            self.position = (epoch, seq)
            self.workload.stats["recoveries refused"] += 1

    def on_closed(self, ws: ClientConnection) -> None:
        if ws is self.ws:
            self.joined = False
            if self.reply is not None and not self.reply.done():
                self.reply.set_exception(_Broken("the socket closed"))
        super().on_closed(ws)

    async def _rejoin_here(self) -> None:
        for attempt in itertools.count():
            if self.workload.stopping or self.ws is None:
                return
            try:
                await self._join()
                return
            except _Broken:
                if self.reconnecting or self.ws.close_code is not None:
                    return  # the socket is gone: reconnecting rejoins
                await asyncio.sleep(RETRY_DELAYS[min(attempt + 1, len(RETRY_DELAYS) - 1)])


class PublisherSocket(_Socket):
    kind = "publisher"

    def __init__(self, workload: Run, plan: PublisherPlan):
        super().__init__(workload, plan.url)
        self.topics = [workload.topics[t] for t in plan.topics]
        self.ready = False
        self.join_ref = ""
        self.joins = 0
        self.join_replies: dict[str, asyncio.Future] = {}
        self.pending: dict[str, Publish] = {}

    async def start(self) -> None:
        await self.open()
        try:
            await self.rejoin()
        except _Broken as exc:
            raise CannotConnect(f"a publisher's joins on {self.workload.urls[self.url]} failed: {exc}") from None

    async def rejoin(self) -> None:
        self.joins += 1
        self.join_ref = join_ref = f"p{self.joins}"
        loop = asyncio.get_running_loop()
        self.join_replies = {f"{join_ref}:{t}": loop.create_future() for t in range(len(self.topics))}
        for t, topic in enumerate(self.topics):
            self.send([join_ref, f"{join_ref}:{t}", topic, "phx_join", {}])
        try:
            answers = await asyncio.wait_for(asyncio.gather(*self.join_replies.values()), JOIN_TIMEOUT)
        except TimeoutError:
            raise _Broken("no reply to a join") from None
        refused = [(topic, answer) for topic, answer in zip(self.topics, answers, strict=True) if answer[0] != "ok"]
        if refused:
            raise _Broken(f"join of {refused[0][0]} refused: {refused[0][1]}")
        self.ready = True

    def publish(self, publish: Publish) -> None:
        if not self.ready:
            publish.outcome = UNSENT
            return
        ref = f"m{publish.id}"
        self.pending[ref] = publish
        publish.sent_at = self.workload.clock()
        self.send([self.join_ref, ref, publish.topic, "publish", [EVENT, {"id": publish.id}]])

    def on_frame(self, join_ref, ref, topic, event, payload) -> None:
        if event != "phx_reply" or not isinstance(payload, dict):
            if event in ("phx_error", "phx_close") and join_ref == self.join_ref and topic in self.topics:
                self.send([join_ref, f"{join_ref}:again", topic, "phx_join", {}])  # rejoin that topic
            return
        status, response = payload.get("status"), payload.get("response") or {}
        publish = self.pending.pop(ref, None)
        if publish is not None:
            if status == "ok":
                publish.outcome = ACCEPTED
            else:
                publish.outcome, publish.reason = REFUSED, str(response.get("reason", status))
            return
        future = self.join_replies.get(ref)
        if future is not None and not future.done():
            future.set_result((status, response))

    def on_closed(self, ws: ClientConnection) -> None:
        if ws is self.ws:
            self.ready = False
            self.pending.clear()  # never answered now: they stay unanswered
            for future in self.join_replies.values():
                if not future.done():
                    future.set_exception(_Broken("the socket closed"))
        super().on_closed(ws)
