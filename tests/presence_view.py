"""A client's view of a topic's presence, kept the way phoenix.js's Presence keeps it."""

from __future__ import annotations

import asyncio
import json


class PresenceView:
    """Apply presence_state and presence_diff payloads; ``keys()`` and ``refs()`` are what a UI lists."""

    def __init__(self):
        self.state: dict[str, list[dict]] = {}
        self.synced = False
        self.pending: list[dict] = []
        self.diffs = 0

    def apply(self, event: str, payload: dict) -> None:
        if event == "presence_state":
            self.state = {key: list(value["metas"]) for key, value in payload.items()}
            self.synced = True
            for diff in self.pending:
                self._diff(diff)
            self.pending = []
        elif event == "presence_diff":
            assert set(payload) == {"joins", "leaves"}, payload
            self.diffs += 1
            if self.synced:
                self._diff(payload)
            else:
                self.pending.append(payload)

    def _diff(self, diff: dict) -> None:
        for key, value in diff["joins"].items():
            joined = {meta["phx_ref"] for meta in value["metas"]}
            kept = [meta for meta in self.state.get(key, []) if meta["phx_ref"] not in joined]
            self.state[key] = kept + list(value["metas"])
        for key, value in diff["leaves"].items():
            left = {meta["phx_ref"] for meta in value["metas"]}
            metas = [meta for meta in self.state.get(key, []) if meta["phx_ref"] not in left]
            if metas:
                self.state[key] = metas
            else:
                self.state.pop(key, None)

    def keys(self) -> set[str]:
        return set(self.state)

    def refs(self) -> dict[str, set[str]]:
        return {key: {meta["phx_ref"] for meta in metas} for key, metas in self.state.items()}


class PresenceSocket:
    """A raw websocket client on a real node, keeping a PresenceView per topic from what it reads."""

    def __init__(self, ws, name: str):
        self.ws = ws
        self.name = name
        self.views: dict[str, PresenceView] = {}
        self.leaves_seen = 0

    async def send(self, *frame):
        await self.ws.send(json.dumps(list(frame)))

    async def recv(self, timeout: float):
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        if frame[3] in ("presence_state", "presence_diff"):
            self.views.setdefault(frame[2], PresenceView()).apply(frame[3], frame[4])
            if frame[3] == "presence_diff" and frame[4]["leaves"]:
                self.leaves_seen += 1
        return frame

    async def join(self, topic: str, timeout: float = 10):
        await self.send("1", "1", topic, "phx_join", {})
        while True:
            frame = await self.recv(timeout)
            if frame[3] == "phx_reply":
                assert frame[4]["status"] == "ok", frame
                return

    async def until(self, topic: str, predicate, what: str, timeout: float = 10):
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self.views.get(topic, PresenceView())):
                    await self.recv(timeout)
        except TimeoutError:
            view = self.views.get(topic)
            raise AssertionError(f"{self.name}: {what}; its view: {view.keys() if view else None}") from None
        return self.views[topic]

    async def drain(self, seconds: float) -> None:
        """Read whatever arrives for a while (to see that nothing unwanted does)."""
        try:
            async with asyncio.timeout(seconds):
                while True:
                    await self.recv(seconds)
        except TimeoutError:
            pass
