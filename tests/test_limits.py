"""Limits answer as documented, on a real daphne node, and leave other sockets alone."""

import asyncio
import json
import time
import urllib.request

import pytest
import websockets

pytestmark = pytest.mark.processes


async def _join(ws, topic="room:1"):
    await ws.send(json.dumps(["1", "1", topic, "phx_join", {}]))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply[4]["status"] == "ok", reply


def _metric(node, name) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_connections_over_the_limit_are_refused_before_the_upgrade(daphne_factory):
    node = daphne_factory(DPS_MAX_CONNECTIONS="5")
    open_sockets = [await websockets.connect(node.url()) for _ in range(5)]
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(node.url())
    assert refused.value.response.status_code == 403
    await _join(open_sockets[0])  # the open ones are unaffected
    await open_sockets[-1].close()
    deadline = time.monotonic() + 10
    while True:  # the closed socket's place is free again once the node has seen the close
        try:
            open_sockets[-1] = await websockets.connect(node.url())
            break
        except websockets.InvalidStatus:
            assert time.monotonic() < deadline, "a closed connection's place never came free"
            await asyncio.sleep(0.05)
    assert _metric(node, "dps_node_connections_refused_total") >= 1
    assert "DPS_MAX_CONNECTIONS" in node.output()
    for ws in open_sockets:
        await ws.close()


async def test_publishes_over_the_rate_get_an_error_reply_and_nothing_else(daphne_factory):
    node = daphne_factory(DPS_PUBLISH_RATE="2", DPS_PUBLISH_BURST="3")
    fast, calm, listener = [await websockets.connect(node.url()) for _ in range(3)]
    for ws in (fast, calm, listener):
        await _join(ws)
    for n in range(10):
        await fast.send(json.dumps(["1", f"f{n}", "room:1", "publish", ["chat", {"n": n}]]))
    replies = {}
    while len(replies) < 10:
        frame = json.loads(await asyncio.wait_for(fast.recv(), 10))
        if frame[3] == "phx_reply":
            replies[frame[1]] = frame[4]
    refused = [ref for ref, reply in replies.items() if reply["status"] == "error"]
    assert all(replies[ref] == {"status": "error", "response": {"reason": "rate limited"}} for ref in refused)
    assert 3 <= 10 - len(refused) <= 4, f"the burst of 3 (and at most one refilled token) got through: {replies}"
    # Another socket has its own bucket.
    await calm.send(json.dumps(["1", "c", "room:1", "publish", ["chat", {"n": "calm"}]]))
    got = []
    async with asyncio.timeout(10):
        while "calm" not in got:
            frame = json.loads(await listener.recv())
            if frame[3] == "chat":
                got.append(frame[4]["n"])
    assert len(got) == 10 - len(refused) + 1, f"only accepted publishes were broadcast: {got}"
    assert _metric(node, "dps_node_publishes_rate_limited_total") == len(refused)
    for ws in (fast, calm, listener):
        await ws.close()


async def test_a_frame_over_daphnes_own_limit_gets_a_close_code_and_a_log_line(daphne_node):
    """Frames over DPS_MAX_FRAME_BYTES get 4009 from DPS; over daphne's message limit (1 MiB by
    default, --websocket_max_message_size) daphne's websocket layer closes first: with 1009."""
    big, other = [await websockets.connect(daphne_node.url(), max_size=None) for _ in range(2)]
    await _join(other)
    await big.send("x" * (1024 * 1024 + 10))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(10):
            await big.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    deadline = time.monotonic() + 10
    while "closed with 1009" not in daphne_node.output():
        assert time.monotonic() < deadline, daphne_node.output()[-2000:]
        await asyncio.sleep(0.05)
    await other.send(json.dumps([None, "h", "phoenix", "heartbeat", {}]))  # the node serves the others
    assert json.loads(await asyncio.wait_for(other.recv(), 10))[4]["status"] == "ok"
    await other.close()
