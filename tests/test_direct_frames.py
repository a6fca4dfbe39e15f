"""Broadcast frames that the fastlane writes to daphne's sockets itself (pubsub/socket/fastlane.py, frame_writer).

A real daphne node and real websocket clients: every frame length the websocket
header encodes three ways (7-bit, 16-bit, 64-bit), frames the kernel takes only in
part (the rest goes to Twisted's buffer and the next frames queue behind it), and
replies written by daphne's own path in between: every client gets every frame
whole, byte for byte, in the publisher's order.
"""

import asyncio
import json

import pytest
import websockets

from tests.test_slow_readers import join, small_buffer_client

pytestmark = pytest.mark.processes

ROOM = "room:frames"
SETTINGS = {
    "DPS_PUBLISH_RATE": "0",
    "DPS_MAX_FRAME_BYTES": str(1 << 20),  # publishes of up to 300 KB
    "DPS_MAX_SEND_BUFFER": str(64 << 20),  # a slow reader here is slow, not stuck: never cut off
}


def _broadcast(join_ref: str, n: int, pad: str) -> str:
    return json.dumps([join_ref, None, ROOM, "m", {"n": n, "pad": pad}], separators=(",", ":"))


def _pad_for(frame_bytes: int, n: int) -> str:
    """A pad that makes a reader's broadcast frame exactly frame_bytes long (join_refs are one character)."""
    return "x" * (frame_bytes - len(_broadcast("r", n, "")))


# Around each of the header's length boundaries (125/126 and 65535/65536), and big ones: 12 rounds
# are about 5 MB per client, more than a loopback socket's send buffer takes (4 MB at most).
SIZES = [60, 125, 126, 127, 65_535, 65_536, 65_537, 300_000]


async def _join(ws, ref):
    await join(ws, ref, ROOM)


async def _slow_client(url):
    """A client with a small receive buffer: big frames reach it in parts, through Twisted's buffer."""
    return await small_buffer_client(url, 8 * 1024)


async def _expect(ws, join_ref, messages, pause=0.0):
    """The broadcasts, whole and in order; ignores replies. pause: a slow reader's wait per frame."""
    got = 0
    async with asyncio.timeout(60):
        while got < len(messages):
            text = await ws.recv()
            if pause:
                await asyncio.sleep(pause)
            if '"phx_reply"' in text[:80]:
                continue
            n, pad = messages[got]
            assert text == _broadcast(join_ref, n, pad), f"frame {got} to {join_ref}: {text[:120]}"
            got += 1
    return got


async def test_every_frame_length_arrives_whole_and_in_order(daphne_factory):
    node = daphne_factory(**SETTINGS)
    url = node.url()
    readers = [await websockets.connect(url, ping_interval=None, max_size=None) for _ in range(3)]
    slow = [await _slow_client(url) for _ in range(2)]
    clients = [*readers, *slow]
    refs = [str(i) for i in range(len(clients))]
    for ws, ref in zip(clients, refs, strict=True):
        await _join(ws, ref)
    messages = [(n, _pad_for(SIZES[n % len(SIZES)], n)) for n in range(12 * len(SIZES))]
    assert {len(_broadcast("r", n, pad).encode()) for n, pad in messages} == set(SIZES)
    reading = [
        asyncio.ensure_future(_expect(ws, ref, messages, pause=0.005 if ws in slow else 0.0))
        for ws, ref in zip(clients, refs, strict=True)
    ]
    publisher = readers[0]
    for n, pad in messages:
        # publish replies (daphne's own path) are written between the broadcasts (the fastlane's)
        await publisher.send(json.dumps(["0", f"p{n}", ROOM, "publish", ["m", {"n": n, "pad": pad}]]))
    assert await asyncio.gather(*reading) == [len(messages)] * len(clients)
    for ws in clients:
        await ws.close()
