"""LongPoll at /socket/longpoll: the real phoenix client on its LongPoll transport, requests of one
session served by either of two nodes, and bad requests answered with Phoenix's codes."""

import asyncio
import json

import pytest
import requests
import websockets

from tests import phoenix_js
from tests.processes import HOST

pytestmark = pytest.mark.processes
TIMEOUT = 15
SEED_PUBLISH = '["1","2","topics:matrix","publish",["event",{"message":"red pill or blue pill?"}]]'


def longpoll(node, query="vsn=2.0.0"):
    return f"http://{HOST}:{node.port}/socket/longpoll?{query}"


def get(url, **headers):
    response = requests.get(url, headers={"Accept": "application/json", **headers}, timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    return response.json()


def post(url, lines, **headers):
    body = "\n".join(lines)
    response = requests.post(
        url, data=body, headers={"Content-Type": "application/x-ndjson", **headers}, timeout=TIMEOUT
    )
    assert response.status_code == 200
    return response.json()


def poll_until(url, want, token):
    """GETs until a frame with want in it came (each GET returns at once or within the window)."""
    seen = []
    for _ in range(10):
        answer = get(url + "&token=" + token)
        assert answer["status"] in (200, 204), answer
        seen += answer.get("messages", [])
        if any(want in frame for frame in seen):
            return seen
    raise AssertionError(f"{want!r} never came: {seen}")


@pytest.mark.node
async def test_the_phoenix_clients_longpoll_transport_joins_publishes_and_receives(daphne_node):
    modules = phoenix_js.install()
    async with websockets.connect(daphne_node.url()) as ws:
        await ws.send('["1","1","topics:matrix","phx_join",{}]')
        assert json.loads(await ws.recv())[4]["status"] == "ok"
        client = await phoenix_js.PhoenixSession.run(
            modules, "phoenix_longpoll.js", f"ws://{HOST}:{daphne_node.port}/socket", "topics:matrix", "2"
        )
        assert (await client.wait_for("joined"))["transport"] == "LongPoll"
        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert frame == ["1", None, "topics:matrix", "event", {"message": "over long-poll"}]
        await ws.send(SEED_PUBLISH)  # and a websocket's publish reaches the long-poll client
        await client.wait_for("broadcast")
        await client.wait_for("broadcast")
        assert await asyncio.wait_for(client.process.wait(), 10) == 0
        events = client.events
        broadcasts = [e["payload"] for e in events if e["event"] == "broadcast"]
        assert broadcasts == [{"message": "over long-poll"}, {"message": "red pill or blue pill?"}]


async def test_any_node_serves_any_request_of_a_session(cluster_factory):
    """A round-robin balancer: the session's requests alternate between the two nodes."""
    cluster = cluster_factory()
    a, b = cluster.nodes["ws-a"], cluster.nodes["ws-b"]
    opened = await asyncio.to_thread(get, longpoll(a))
    assert opened["status"] == 410 and opened["messages"] == []
    token = opened["token"]
    async with websockets.connect(b.url()) as ws:
        await ws.send('["1","1","topics:matrix","phx_join",{}]')
        assert json.loads(await ws.recv())[4]["status"] == "ok"
        joined = await asyncio.to_thread(
            post, longpoll(b, "vsn=2.0.0&token=" + token), ['["1","1","topics:matrix","phx_join",{}]']
        )
        assert joined == {"status": 200}
        await asyncio.to_thread(poll_until, longpoll(a), '"phx_reply"', token)
        sent = await asyncio.to_thread(post, longpoll(b, "vsn=2.0.0&token=" + token), [SEED_PUBLISH])
        assert sent == {"status": 200}
        assert (
            await asyncio.wait_for(ws.recv(), TIMEOUT)
            == '["1",null,"topics:matrix","event",{"message":"red pill or blue pill?"}]'
        )
        await ws.send('["1","3","topics:matrix","publish",["event",{"from":"ws"}]]')
        seen = await asyncio.to_thread(poll_until, longpoll(b), '{"from":"ws"}', token)
        assert '["1",null,"topics:matrix","event",{"from":"ws"}]' in seen


async def test_bad_requests_get_phoenixs_answers(daphne_node):
    url = longpoll(daphne_node)
    assert (await asyncio.to_thread(requests.put, url, timeout=TIMEOUT)).status_code == 400
    refused = await asyncio.to_thread(get, longpoll(daphne_node, "vsn=9.0.0"))
    assert refused == {"status": 403}
    fresh = await asyncio.to_thread(get, url, **{"X-Phoenix-Longpoll-Token": "not-a-session"})
    assert fresh["status"] == 410 and fresh["token"], "an unknown token gets a new session"
    gone = await asyncio.to_thread(
        post, url, ['["1","1","t","phx_join",{}]'], **{"X-Phoenix-Longpoll-Token": "not-a-session"}
    )
    assert gone == {"status": 410}
    too_many = await asyncio.to_thread(
        post, url + "&token=" + fresh["token"], ['[null,"1","phoenix","heartbeat",{}]'] * 101
    )
    assert too_many == {"status": 400}
    too_big = await asyncio.to_thread(post, url + "&token=" + fresh["token"], ["x" * (9 * 1024 * 1024)])
    assert too_big == {"status": 413}
    preflight = await asyncio.to_thread(
        requests.options, url, headers={"Access-Control-Request-Headers": "x-phoenix-longpoll-token"}, timeout=TIMEOUT
    )
    assert preflight.headers["access-control-allow-methods"] == "get, post, options"


async def test_a_session_no_get_asks_for_ends_and_a_v1_client_works_too():
    """In process, with a 0.2 s window: a V1 client's object POSTed as the whole body, then silence:
    the session ends (its channels leave), and its token gets a new session."""
    from channels.layers import get_channel_layer
    from channels.testing import HttpCommunicator

    from pubsub.socket.consumer import PhoenixSocket
    from pubsub.socket.longpoll import LongPoll

    app = LongPoll(PhoenixSocket.as_asgi(idle_timeout=0), window=0.2)

    async def request(method, query, body=b"", content_type=b"application/json"):
        communicator = HttpCommunicator(
            app, method, f"/socket/longpoll?{query}", body, [(b"content-type", content_type)]
        )
        response = await communicator.get_response(timeout=5)
        assert response["status"] == 200
        return json.loads(response["body"])

    opened = await request("GET", "vsn=1.0.0")
    token = opened["token"]
    join = b'{"topic":"room:v1lp","event":"phx_join","payload":{},"ref":"1"}'
    assert await request("POST", f"vsn=1.0.0&token={token}", join) == {"status": 200}
    answer = await request("GET", f"vsn=1.0.0&token={token}")
    assert answer["messages"] == [
        '{"topic":"room:v1lp","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}'
    ]
    layer = get_channel_layer()
    assert layer.local_members("room:v1lp") == 1
    for _ in range(100):  # bounded: expiry 0.3 s, swept every 0.1 s
        if not app.sessions:
            break
        await asyncio.sleep(0.05)
    assert not app.sessions, "the session outlived its expiry"
    for _ in range(100):
        if layer.local_members("room:v1lp") == 0:
            break
        await asyncio.sleep(0.05)
    assert layer.local_members("room:v1lp") == 0, "an ended session's channels leave"
    again = await request("GET", f"vsn=1.0.0&token={token}")
    assert again["status"] == 410 and again["token"] != token


async def test_a_binary_push_uploaded_as_a_base64_line_reaches_websocket_subscribers():
    import base64

    from channels.testing import HttpCommunicator, WebsocketCommunicator

    from pubsub.core import protocol
    from pubsub.socket.consumer import PhoenixSocket
    from pubsub.socket.longpoll import LongPoll

    app = LongPoll(PhoenixSocket.as_asgi(idle_timeout=0), window=0.5)

    async def request(method, query, body=b""):
        headers = [(b"content-type", b"application/x-ndjson")]
        response = await HttpCommunicator(app, method, f"/socket/longpoll?{query}", body, headers).get_response(
            timeout=5
        )
        return json.loads(response["body"])

    watcher = WebsocketCommunicator(PhoenixSocket.as_asgi(), "/socket/websocket?vsn=2.0.0")
    assert (await watcher.connect(5))[0]
    try:
        await watcher.send_to(text_data='["1","1","room:lpbin","phx_join",{}]')
        assert json.loads(await watcher.receive_from(5))[4]["status"] == "ok"
        token = (await request("GET", "vsn=2.0.0"))["token"]
        push = bytes([0, 1, 1, 10, 7]) + b"12room:lpbinpublish" + b"\x00\xff\x10"
        lines = b'["1","1","room:lpbin","phx_join",{}]\n' + base64.b64encode(push)
        assert await request("POST", f"vsn=2.0.0&token={token}", lines) == {"status": 200}
        want = protocol.encode_binary_broadcast("room:lpbin", "publish", b"\x00\xff\x10")
        assert await watcher.receive_output(5) == {"type": "websocket.send", "bytes": want}
    finally:
        await watcher.disconnect()


async def test_two_hundred_long_poll_clients_at_once_over_two_nodes(cluster_factory):
    """Default settings, requests spread over both nodes: 200 sessions join one topic at once, a
    quarter of them vanish with a GET half-read; one websocket publish reaches every one that stays."""
    import socket as sockets_module
    from concurrent.futures import ThreadPoolExecutor

    cluster = cluster_factory()
    nodes = [cluster.nodes["ws-a"], cluster.nodes["ws-b"]]
    topic = "room:many-lp"

    def open_and_join(index):
        node, other = nodes[index % 2], nodes[(index + 1) % 2]
        token = get(longpoll(node))["token"]
        assert post(longpoll(other, f"vsn=2.0.0&token={token}"), [f'["1","1","{topic}","phx_join",{{}}]']) == {
            "status": 200
        }
        poll_until(longpoll(node), '"phx_reply"', token)
        return index, token

    def vanish(index, token):
        """A GET whose client goes away without reading the answer (a closed tab mid-poll)."""
        raw = sockets_module.create_connection((HOST, nodes[index % 2].port))
        raw.sendall(f"GET /socket/longpoll?vsn=2.0.0&token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        raw.close()

    with ThreadPoolExecutor(32) as pool:
        sessions = list(pool.map(open_and_join, range(200)))
        gone = [s for s in sessions if s[0] % 4 == 0]
        list(pool.map(lambda s: vanish(*s), gone))
        staying = [s for s in sessions if s[0] % 4]
        async with websockets.connect(nodes[0].url()) as ws:
            await ws.send(f'["1","1","{topic}","phx_join",{{}}]')
            assert json.loads(await ws.recv())[4]["status"] == "ok"
            await ws.send(f'["1","2","{topic}","publish",["event",{{"n":1}}]]')
            want = f'["1",null,"{topic}","event",{{"n":1}}]'
            polls = lambda: list(pool.map(lambda s: poll_until(longpoll(nodes[(s[0] + 1) % 2]), want, s[1]), staying))  # noqa: E731
            got = await asyncio.to_thread(polls)
    assert all(want in frames for frames in got), "every staying long-poll client got the broadcast"
    for node in nodes:
        assert "Traceback" not in node.output(), node.output()[-3000:]


async def test_a_long_poll_session_whose_node_freezes_past_the_ttl_gets_what_it_missed(cluster_factory):
    """ws-a, holding the session, is frozen (SIGSTOP) for 2.5 TTLs while a websocket on ws-b
    publishes; once it resumes (SIGCONT) the session's next polls bring the message, once."""
    ttl = 2.0
    cluster = cluster_factory(DPS_LIVENESS_TTL=str(ttl))
    a, b = cluster.nodes["ws-a"], cluster.nodes["ws-b"]
    topic = "room:lp-frozen"
    token = (await asyncio.to_thread(get, longpoll(a)))["token"]
    await asyncio.to_thread(post, longpoll(a, f"vsn=2.0.0&token={token}"), [f'["1","1","{topic}","phx_join",{{}}]'])
    await asyncio.to_thread(poll_until, longpoll(a), '"phx_reply"', token)
    async with websockets.connect(b.url()) as ws:
        await ws.send(f'["1","1","{topic}","phx_join",{{}}]')
        assert json.loads(await ws.recv())[4]["status"] == "ok"
        a.freeze()
        try:
            await asyncio.sleep(2.5 * ttl)  # the freeze itself: past the TTL, the owners drop ws-a
            await ws.send(f'["1","2","{topic}","publish",["event",{{"while":"frozen"}}]]')
            await asyncio.wait_for(ws.recv(), TIMEOUT)  # accepted (its ok reply or broadcast)
        finally:
            a.resume()
    want = f'["1",null,"{topic}","event",{{"while":"frozen"}}]'
    frames = await asyncio.to_thread(poll_until, longpoll(a), want, token)
    assert frames.count(want) == 1, frames
