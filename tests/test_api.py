"""The HTTP publishing API on real nodes: a publish on node A reaches subscribers on node B."""

import asyncio
import json
import urllib.error
import urllib.request

import pytest
import websockets

pytestmark = pytest.mark.processes

API_KEY = "test-api-key-123"


def _post(node, path, body, headers=None):
    """(status, decoded JSON body) of a POST to a node."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.port}{path}",
        data=data,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"apikey {API_KEY}"} if headers is None else headers),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw.startswith(b"{") else raw


async def _subscriber(node, topic):
    ws = await websockets.connect(node.url())
    await ws.send(json.dumps(["1", "1", topic, "phx_join", {}]))
    assert json.loads(await asyncio.wait_for(ws.recv(), 10))[4]["status"] == "ok"
    return ws


async def _events(ws, count, timeout=10):
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            frame = json.loads(await ws.recv())
            got.append((frame[2], frame[3], frame[4]))
    return got


async def _nothing_more(ws, wait=0.5):
    try:
        frame = await asyncio.wait_for(ws.recv(), wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame {frame}")


async def test_publish_broadcast_errors_and_idempotency(cluster_factory):
    cluster = cluster_factory(DPS_API_KEY=API_KEY)
    a, b = cluster.nodes["ws-a"], cluster.nodes["ws-b"]
    news, sport = await _subscriber(b, "news:1"), await _subscriber(b, "sport:1")

    assert await asyncio.to_thread(
        _post, a, "/api/publish", {"topic": "news:1", "event": "headline", "payload": {"n": 1}}
    ) == (
        200,
        {"result": {}},
    )
    assert await _events(news, 1) == [("news:1", "headline", {"n": 1})]
    status, body = await asyncio.to_thread(
        _post,
        a,
        "/api/broadcast",
        {"topics": ["news:1", "sport:1"], "event": "alert", "payload": {"n": 2}},
        {"X-API-Key": API_KEY},
    )
    assert (status, body) == (200, {"result": {"topics": 2}})
    assert await _events(news, 1) == [("news:1", "alert", {"n": 2})]
    assert await _events(sport, 1) == [("sport:1", "alert", {"n": 2})]

    # Idempotency: the same key for the same topic is accepted twice and delivered once.
    once = {"topic": "news:1", "event": "headline", "payload": {"n": 3}, "idempotency_key": "k-3"}
    assert (await asyncio.to_thread(_post, a, "/api/publish", once))[0] == 200
    assert (await asyncio.to_thread(_post, b, "/api/publish", once))[0] == 200  # from another node too
    assert await _events(news, 1) == [("news:1", "headline", {"n": 3})]
    await _nothing_more(news)

    errors = [
        ({"topic": "news:1", "event": "e", "payload": {}}, {}, 401),
        ({"topic": "news:1", "event": "e", "payload": {}}, {"Authorization": "apikey wrong"}, 401),
        (b"not json", None, 400),
        ({"event": "e", "payload": {}}, None, 400),
        ({"topic": "news:1", "event": "phx_reply", "payload": {}}, None, 400),
        ({"topic": "news:1", "event": "e", "payload": [1]}, None, 400),
        ({"topic": "news:1", "event": "e", "payload": {}, "idempotency_key": 7}, None, 400),
    ]
    for body, headers, status in errors:
        got_status, got = await asyncio.to_thread(_post, a, "/api/publish", body, headers)
        assert got_status == status and "message" in got["error"], (body, got_status, got)
    assert "payload" in (await asyncio.to_thread(_post, a, "/api/publish", errors[5][0]))[1]["error"]["message"]
    assert (await asyncio.to_thread(_post, a, "/api/broadcast", {"topics": [], "event": "e", "payload": {}}))[0] == 400
    await _nothing_more(news)

    cluster.redis.stop()  # Redis away: the API says so, after a bounded retry
    status, body = await asyncio.to_thread(_post, a, "/api/publish", {"topic": "news:1", "event": "e", "payload": {}})
    assert status == 503 and "unavailable" in body["error"]["message"]
    for ws in (news, sport):
        await ws.close()


async def test_without_an_api_key_there_is_no_api(daphne_node):
    status, _ = await asyncio.to_thread(_post, daphne_node, "/api/publish", {"topic": "t", "event": "e", "payload": {}})
    assert status == 404
