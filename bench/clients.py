"""Websocket clients in their own processes, so the load generator is not what gets measured.

A ClientGroup runs one process that holds many sockets spread over the node URLs,
joins them to a topic, then counts the benchmark's broadcasts and their latency
(publish time is in the payload; all processes share this machine's clock).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import time

import websockets

_EVENT = '"bench",{'
_STAMP = '"t":'
# Like phoenix.js (every 30 s): DPS closes a socket without a frame for DPS_IDLE_TIMEOUT (60 s), and
# opening 10,000 sockets then measuring takes longer than that.
_HEARTBEAT_INTERVAL = 20.0
_HEARTBEAT = json.dumps([None, "hb", "phoenix", "heartbeat", {}])


class ClientGroup:
    """Controls one client process through a pipe."""

    def __init__(self, urls: list[str], count: int, topic: str, join: bool = True, batch: int = 250):
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=_run, args=(urls, count, topic, join, batch, child), daemon=True)
        self.process.start()

    def ready(self, timeout: float = 300) -> dict:
        return self._reply(timeout)

    def expect(self, messages: int, timeout: float) -> dict:
        """Count until every socket got `messages` broadcasts (or timeout); returns the counts."""
        self.pipe.send(("expect", messages, timeout))
        return self._reply(timeout + 60)

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.pipe.send(("close",))
            except OSError:
                pass
            self.process.join(30)
        if self.process.is_alive():
            self.process.kill()

    def _reply(self, timeout: float) -> dict:
        if not self.pipe.poll(timeout):
            raise TimeoutError("client process did not answer")
        return self.pipe.recv()


def _run(urls, count, topic, join, batch, pipe) -> None:
    asyncio.run(_main(urls, count, topic, join, batch, pipe))


async def _main(urls, count, topic, join, batch_size, pipe) -> None:
    started = time.perf_counter()
    results = []
    opened: list = []
    heartbeats = asyncio.ensure_future(_heartbeats(opened))
    for first in range(0, count, batch_size):
        batch = range(first, min(count, first + batch_size))
        results += await asyncio.gather(
            *(_open(urls[i % len(urls)], topic, str(i), join, opened) for i in batch), return_exceptions=True
        )
    sockets = [ws for ws in results if not isinstance(ws, BaseException)]
    failures = [repr(e)[:120] for e in results if isinstance(e, BaseException)]
    pipe.send(
        {
            "connected": len(sockets),
            "failures": len(failures),
            "errors": failures[:3],
            "seconds": time.perf_counter() - started,
        }
    )
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command[0] == "close":
            break
        _, messages, timeout = command
        pipe.send(await _count(sockets, messages, timeout))
    heartbeats.cancel()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def _open(url, topic, ref, join, opened):
    ws = await websockets.connect(url, max_queue=None, open_timeout=60, ping_interval=None)
    if join:
        await ws.send(json.dumps([ref, ref, topic, "phx_join", {}]))
        reply = json.loads(await ws.recv())
        if reply[4].get("status") != "ok":
            raise RuntimeError(f"join refused: {reply}")
    opened.append(ws)  # (its heartbeat replies come after its join reply)
    return ws


async def _heartbeats(sockets):
    while True:
        await asyncio.sleep(_HEARTBEAT_INTERVAL)
        for ws in list(sockets):
            try:
                await ws.send(_HEARTBEAT)
            except websockets.ConnectionClosed:
                pass


async def _count(sockets, messages, timeout) -> dict:
    latencies: list[float] = []
    received = [0] * len(sockets)
    last = [0.0]

    async def read(index, ws):
        while received[index] < messages:
            frame = await ws.recv()
            now = time.time()
            stamp = frame.find(_STAMP)  # a broadcast of the benchmark; cheaper than decoding every frame
            if stamp >= 0 and _EVENT in frame:
                received[index] += 1
                start = stamp + len(_STAMP)
                latencies.append(now - float(frame[start : frame.index(",", start)]))
                last[0] = max(last[0], now)

    tasks = [asyncio.ensure_future(read(i, ws)) for i, ws in enumerate(sockets)]
    await asyncio.wait(tasks, timeout=timeout)
    for task in tasks:
        task.cancel()
    sample = latencies if len(latencies) <= 20_000 else random.sample(latencies, 20_000)
    return {"received": sum(received), "expected": messages * len(sockets), "last": last[0], "latencies": sample}
