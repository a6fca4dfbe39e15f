"""Chat-shaped load for tests: many members joining and publishing at once, and what each one saw.

Every member reads its socket all the time (a reader task) and records the
replies to its own requests by ref and the broadcasts it received. Published
payloads carry ``{"from": member, "k": number}``, so what each member should
have received follows from the ok replies alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict

import websockets

CONNECT_TIMEOUT = 60


class Member:
    """One websocket joined to one room."""

    def __init__(self, index: int, room: str):
        self.index = index
        self.room = room
        self.ws = None
        self.replies: dict[str, dict] = {}
        self.received: list[tuple[int, int]] = []  # (from, k) of every broadcast
        self.reply_arrived = asyncio.Event()
        self.reader: asyncio.Task | None = None

    async def connect_and_join(self, url: str) -> str:
        """Connect and join; returns the join status ("ok", or the error's reason)."""
        self.ws = await websockets.connect(url, max_queue=None, open_timeout=CONNECT_TIMEOUT, ping_interval=None)
        self.reader = asyncio.ensure_future(self._read())
        await self.ws.send(json.dumps(["1", "join", self.room, "phx_join", {}]))
        reply = await self.reply("join")
        return "ok" if reply["status"] == "ok" else reply["response"].get("reason", repr(reply))

    async def publish(self, k: int) -> None:
        await self.ws.send(json.dumps(["1", f"p{k}", self.room, "publish", ["chat", {"from": self.index, "k": k}]]))

    async def reply(self, ref: str, timeout: float = CONNECT_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while ref not in self.replies:
            left = deadline - time.monotonic()
            assert left > 0, f"member {self.index}: no reply to {ref} within {timeout}s"
            self.reply_arrived.clear()
            try:
                await asyncio.wait_for(self.reply_arrived.wait(), left)
            except TimeoutError:
                pass
        return self.replies[ref]

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                frame = json.loads(text)
                if frame[3] == "phx_reply":
                    self.replies[frame[1]] = frame[4]
                    self.reply_arrived.set()
                elif frame[3] == "chat":
                    self.received.append((frame[4]["from"], frame[4]["k"]))
        except websockets.ConnectionClosed:
            pass

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            await self.ws.close()


async def join_all(members: list[Member], urls: list[str]) -> Counter:
    """Every member connects and joins at the same moment; returns the join outcomes counted."""
    outcomes = await asyncio.gather(
        *(member.connect_and_join(urls[member.index % len(urls)]) for member in members), return_exceptions=True
    )
    return Counter(o if isinstance(o, str) else f"{type(o).__name__}: {o}" for o in outcomes)


def accepted(members: list[Member], refs: list[str]) -> dict[str, set[tuple[int, int]]]:
    """Per room, the (from, k) of every publish that got an ok reply."""
    ok = defaultdict(set)
    for member in members:
        for ref in refs:
            reply = member.replies.get(ref)
            if reply is not None and reply["status"] == "ok":
                ok[member.room].add((member.index, int(ref[1:])))
    return ok


def delivery_report(members: list[Member], want: dict[str, set[tuple[int, int]]], ks=None) -> dict:
    """Lost and duplicated deliveries of the wanted messages (only ks, if given)."""
    lost = duplicates = deliveries = 0
    for member in members:
        wanted = {m for m in want.get(member.room, ()) if ks is None or m[1] in ks}
        got = Counter(m for m in member.received if ks is None or m[1] in ks)
        deliveries += sum(got.values())
        lost += len(wanted - got.keys())
        duplicates += sum(count - 1 for count in got.values() if count > 1)
    return {"deliveries": deliveries, "lost": lost, "duplicates": duplicates}


async def wait_delivered(members, want, ks=None, timeout: float = 60) -> dict:
    """Wait (bounded) until nothing wanted is missing; returns the report either way."""
    deadline = time.monotonic() + timeout
    while True:
        report = delivery_report(members, want, ks)
        if report["lost"] == 0 or time.monotonic() > deadline:
            return report
        await asyncio.sleep(0.2)


async def wait_replies(members: list[Member], refs: list[str], timeout: float = 60) -> Counter:
    """Wait for every member's reply to each ref; returns the statuses (and error reasons) counted."""
    deadline = time.monotonic() + timeout
    while any(ref not in m.replies for m in members for ref in refs) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return Counter(
        "unanswered"
        if ref not in m.replies
        else m.replies[ref]["status"]
        if m.replies[ref]["status"] == "ok"
        else m.replies[ref]["response"].get("reason", "error")
        for m in members
        for ref in refs
    )
