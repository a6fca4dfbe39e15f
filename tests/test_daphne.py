"""A real daphne process (embedded default, no Redis) driven by a real websocket client."""

import asyncio
import json

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytestmark = pytest.mark.processes

TIMEOUT = 5
SEED_BROADCAST = '["1",null,"topics:matrix","event",{"message":"red pill or blue pill?"}]'


async def recv_until(ws, predicate, timeout=TIMEOUT):
    """Frames up to and including the first one predicate accepts."""
    seen = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                seen.append(await ws.recv())
                if predicate(seen[-1]):
                    return seen
    except TimeoutError:
        raise AssertionError(f"no expected frame within {timeout}s; got {seen}") from None


async def assert_works(url):
    """A fresh client can join, publish and receive its own broadcast."""
    async with websockets.connect(url) as ws:
        await ws.send('["1","1","check","phx_join",{}]')
        assert json.loads(await ws.recv())[4]["status"] == "ok"
        await ws.send('["1","2","check","publish",["ping",{"ok":true}]]')
        await recv_until(ws, lambda f: f == '["1",null,"check","ping",{"ok":true}]')


JOIN_OK = '["1","1","topics:matrix","phx_reply",{"status":"ok","response":{}}]'


async def seed_session(url_terminal1, url_terminal2):
    """The seed README's two-terminal session, byte for byte, on two URLs (one node or two)."""
    async with websockets.connect(url_terminal1) as terminal1, websockets.connect(url_terminal2) as terminal2:
        await terminal1.send('["1", "1", "topics:matrix", "phx_join", {}]')
        assert await terminal1.recv() == JOIN_OK
        await terminal2.send('["1", "1", "topics:matrix", "phx_join", {}]')
        assert await terminal2.recv() == JOIN_OK
        await terminal2.send(
            '["1", "1", "topics:matrix", "publish", ["event", { "message": "red pill or blue pill?"}]]'
        )
        frames = await recv_until(terminal2, lambda f: f == SEED_BROADCAST)
        assert set(frames) <= {SEED_BROADCAST, JOIN_OK}
        assert await asyncio.wait_for(terminal1.recv(), TIMEOUT) == SEED_BROADCAST


async def test_seed_usage_byte_for_byte(daphne_node):
    await seed_session(daphne_node.url(), daphne_node.url())


@pytest.mark.parametrize(
    "bad, expect_close",
    [
        ("not json at all", 4007),
        ('{"topic": "x"}', 4007),
        ('["1", "1"]', 4007),
        ('["1", "1", {"a": 1}, "phx_join", {}]', 4007),
        ('["1", "1", "t", "publish", ["e", {"blob": "' + "x" * 70000 + '"}]]', 4009),
        (b"\x00binary", 4007),  # a binary push shorter than its field lengths
    ],
)
async def test_bad_input_closes_cleanly_and_others_keep_working(daphne_node, bad, expect_close):
    url = daphne_node.url()
    async with websockets.connect(url) as bystander:
        await bystander.send('["1","1","topics:matrix","phx_join",{}]')
        await bystander.recv()
        async with websockets.connect(url, max_size=None) as offender:
            await offender.send(bad)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(offender.recv(), TIMEOUT)
            assert closed.value.rcvd.code == expect_close
        await bystander.send('["1","2","topics:matrix","publish",["still",{"here":true}]]')
        await recv_until(bystander, lambda f: f == '["1",null,"topics:matrix","still",{"here":true}]')
    await assert_works(url)
    assert "Traceback" not in daphne_node.output()


@pytest.mark.parametrize(
    "bad",
    [
        '[1, 1, "t", "phx_join", {}]',
        '["1", "1", "t", 5, {}]',
        '["1", "1", "unjoined", "publish", ["e", {}]]',
        '["1", "1", "has space", "phx_join", {}]',
        '["1", "1", "t", "phx_join", {}, "extra"]',
    ],
)
async def test_bad_frames_get_replies_and_the_socket_stays_open(daphne_node, bad):
    url = daphne_node.url()
    async with websockets.connect(url) as ws:
        await ws.send(bad)
        reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert reply[3] == "phx_reply"
        await ws.send('[null,"hb","phoenix","heartbeat",{}]')
        await recv_until(ws, lambda f: f == '[null,"hb","phoenix","phx_reply",{"status":"ok","response":{}}]')
    await assert_works(url)


async def test_too_many_channels(daphne_factory):
    node = daphne_factory(DPS_MAX_CHANNELS="3")
    async with websockets.connect(node.url()) as ws:
        for i in range(3):
            await ws.send(json.dumps([str(i), str(i), f"t{i}", "phx_join", {}]))
            assert json.loads(await ws.recv())[4]["status"] == "ok"
        await ws.send('["9","9","t9","phx_join",{}]')
        assert json.loads(await ws.recv())[4] == {"status": "error", "response": {"reason": "too many channels joined"}}


@pytest.mark.parametrize("query", ["vsn=3.0.0", "vsn=2.1.0", "vsn=x"])
async def test_other_vsn_is_refused_with_403(daphne_node, query):
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(daphne_node.url(query)):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("query", ["vsn=1.0.0", ""])
async def test_a_v1_client_joins_publishes_and_receives(daphne_node, query):
    """V1 (vsn 1.0.0, or no vsn, as Phoenix): frames are objects, and no outbound frame has a join_ref."""
    async with websockets.connect(daphne_node.url(query)) as ws:
        await ws.send('{"topic":"topics:matrix","event":"phx_join","payload":{},"ref":"1"}')
        assert json.loads(await ws.recv())["payload"] == {"status": "ok", "response": {}}
        await ws.send('{"topic":"topics:matrix","event":"publish","payload":["event",{"message":"hi"}],"ref":"2"}')
        want = '{"topic":"topics:matrix","event":"event","payload":{"message":"hi"},"ref":null}'
        await recv_until(ws, lambda f: f == want)


async def test_other_paths_are_refused(daphne_node):
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"ws://127.0.0.1:{daphne_node.port}/elsewhere"):
            pass
    assert refused.value.response.status_code == 403


async def test_idle_socket_is_closed_and_heartbeats_keep_it_open(daphne_factory):
    node = daphne_factory(DPS_IDLE_TIMEOUT="1")
    async with websockets.connect(node.url()) as idle, websockets.connect(node.url()) as lively:
        for ref in range(5):  # 2.5 s of heartbeats, every 0.5 s
            await lively.send(json.dumps([None, str(ref), "phoenix", "heartbeat", {}]))
            assert json.loads(await asyncio.wait_for(lively.recv(), TIMEOUT))[1] == str(ref)
            await asyncio.sleep(0.5)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(idle.recv(), TIMEOUT)
        assert closed.value.rcvd.code == 4001


async def test_many_subscribers_receive_every_message_in_order(daphne_node):
    url = daphne_node.url()
    subscribers = [await websockets.connect(url) for _ in range(50)]
    try:
        for index, ws in enumerate(subscribers):
            await ws.send(json.dumps([str(index), str(index), "fan", "phx_join", {}]))
            assert json.loads(await ws.recv())[4]["status"] == "ok"
        publisher = subscribers[0]
        for n in range(20):
            await publisher.send(json.dumps(["0", f"p{n}", "fan", "publish", ["n", {"n": n}]]))
        for index, ws in enumerate(subscribers):
            got = []
            async with asyncio.timeout(TIMEOUT):
                while len(got) < 20:
                    frame = json.loads(await ws.recv())
                    if frame[3] == "n":
                        assert frame[0] == str(index)
                        got.append(frame[4]["n"])
            assert got == list(range(20))
    finally:
        for ws in subscribers:
            await ws.close()
