"""Channel classes: routing by topic pattern, join answers, handle_in answers, broadcasts, crashes."""

import asyncio
import json
import os
from pathlib import Path

import pytest
import websockets

from pubsub.exceptions import ConfigurationError
from pubsub.socket.auth import SocketAuth
from pubsub.socket.channel_routes import ChannelRoutes
from pubsub.socket.channels import Channel, PublishChannel
from pubsub.socket.consumer import PhoenixSocket
from tests import channel_examples, phoenix_js
from tests.channel_examples import ROUTES, RoomChannel
from tests.test_consumers import Client

TIMEOUT = 3


def app(**options):
    options.setdefault("channel_routes", ChannelRoutes(ROUTES))
    options.setdefault("socket_auth", SocketAuth("tests.channel_examples.plan_hook"))
    return PhoenixSocket.as_asgi(**options)


@pytest.fixture
def connect(open_communicator):
    async def open_socket(query="", **options):
        return Client(await open_communicator(app(**options), f"/socket/websocket?vsn=2.0.0&{query}"))

    channel_examples.ended.clear()
    return open_socket


async def join(client, topic, params=None, join_ref="1"):
    await client.send(join_ref, join_ref, topic, "phx_join", params or {})
    return await client.recv()


async def ended(topic, reason):
    """Wait (bounded) until a channel of topic has ended with reason."""
    for _ in range(100):
        if (topic, reason) in channel_examples.ended:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{topic} never ended with {reason!r}; ended: {channel_examples.ended}")


# Routing


def test_routes_match_exact_topics_and_prefixes_first_match_wins():
    class Other(Channel):
        pass

    routes = ChannelRoutes([("room:vip", Other), ("room:*", RoomChannel), ("*", "pubsub.channels.PublishChannel")])
    assert routes.match("room:vip") is Other
    assert routes.match("room:vip2") is RoomChannel
    assert routes.match("room:") is RoomChannel
    assert routes.match("rooms") is PublishChannel
    assert ChannelRoutes([("lobby", Other)]).match("lobby:1") is None
    assert ChannelRoutes().match("anything") is PublishChannel


@pytest.mark.parametrize(
    "routes, complaint",
    [
        ([("room:*:x", RoomChannel)], "'*' only at the end"),
        ([("", RoomChannel)], "'*' only at the end"),
        ([("room:*",)], "not a (pattern, class) pair"),
        ([("room:*", "tests.channel_examples.Missing")], "cannot be imported"),
        ([("room:*", "tests.channel_examples.plan_hook")], "not a subclass of pubsub.channels.Channel"),
        ([("room:*", dict)], "not a subclass"),
    ],
)
def test_bad_routes_fail_at_start_naming_the_setting(routes, complaint):
    with pytest.raises(ConfigurationError, match="DPS_CHANNELS") as raised:
        ChannelRoutes(routes)
    assert complaint in str(raised.value)


async def test_a_topic_no_route_matches_gets_the_unmatched_topic_reply(connect):
    client = await connect()
    assert await join(client, "lobby:2", join_ref="7") == [
        None,
        "7",
        "lobby:2",
        "phx_reply",
        {"status": "error", "response": {"reason": "unmatched topic"}},
    ]
    assert await join(client, "lobby") == ["1", "1", "lobby", "phx_reply", {"status": "ok", "response": {}}]


# Join


async def test_join_answers_with_the_classes_response_and_assigns_from_the_socket(connect):
    client = await connect("user=ann&plan=gold")
    assert await join(client, "room:1", {"nick": "annie"}) == [
        "1",
        "1",
        "room:1",
        "phx_reply",
        {"status": "ok", "response": {"nick": "annie", "identity": "ann", "plan": "gold"}},
    ]
    anonymous = await connect()
    reply = await join(anonymous, "room:1")
    assert reply[4]["response"] == {"nick": "anonymous", "identity": None, "plan": "free"}


async def test_a_refused_join_carries_the_classes_reason_and_subscribes_nothing(connect):
    client = await connect()
    assert await join(client, "room:1", {"password": "wrong"}) == [
        "1",
        "1",
        "room:1",
        "phx_reply",
        {"status": "error", "response": {"reason": "wrong password", "attempts_left": 2}},
    ]
    other = await connect()
    await join(other, "room:1", {"nick": "bo"})
    await other.send("1", "2", "room:1", "shout", {"text": "hi"})
    assert (await other.recv())[3] == "shout"
    await client.silent()


async def test_a_crashing_join_is_refused_and_the_socket_lives_on(connect, caplog):
    client = await connect()
    reply = await join(client, "room:1", {"crash": True})
    assert reply[4] == {"status": "error", "response": {"reason": "join crashed"}}
    assert "RoomChannel.join failed for room:1" in caplog.text
    assert (await join(client, "room:1", {"nick": "again"}, join_ref="2"))[4]["status"] == "ok"


async def test_after_join_pushes_once_the_ok_reply_is_sent(connect):
    client = await connect()
    reply, welcome = [await join(client, "room:9", {"nick": "greeted"})], await client.recv()
    assert reply[0][4]["status"] == "ok"
    assert welcome == ["1", None, "room:9", "welcome", {"topic": "room:9"}]


# handle_in


async def test_a_reply_echoes_the_clients_ref_with_the_classes_status_and_response(connect):
    client = await connect()
    await join(client, "room:1")
    await client.send("1", "5", "room:1", "ping", {"n": 1})
    assert await client.recv() == ["1", "5", "room:1", "phx_reply", {"status": "ok", "response": {"pong": {"n": 1}}}]
    await client.send("1", "6", "room:1", "refuse", {})
    assert await client.recv() == [
        "1",
        "6",
        "room:1",
        "phx_reply",
        {"status": "error", "response": {"reason": "not today"}},
    ]
    await client.send("1", "7", "room:1", "dance", {})
    assert (await client.recv())[4] == {"status": "error", "response": {"reason": "unknown event 'dance'"}}


async def test_noreply_broadcast_reaches_everyone_and_push_only_this_socket(connect):
    ann, bo = await connect(), await connect()
    await join(ann, "room:1", {"nick": "ann"})
    await join(bo, "room:1", {"nick": "bo"}, join_ref="4")
    await ann.send("1", "2", "room:1", "shout", {"text": "hi"})
    assert await ann.recv() == ["1", None, "room:1", "shout", {"from": "ann", "text": "hi"}]  # no reply first
    assert await bo.recv() == ["4", None, "room:1", "shout", {"from": "ann", "text": "hi"}]
    await bo.send("4", "5", "room:1", "push_me", {"x": 1})
    assert await bo.recv() == ["4", None, "room:1", "pushed", {"x": 1}]
    await ann.silent()


async def test_broadcast_from_reaches_everyone_but_the_sender(connect):
    ann, bo, cy = await connect(), await connect(), await connect()
    for client, nick in ((ann, "ann"), (bo, "bo"), (cy, "cy")):
        await join(client, "room:1", {"nick": nick})
    await ann.send("1", "2", "room:1", "say", {"text": "psst"})
    assert await ann.recv() == ["1", "2", "room:1", "phx_reply", {"status": "ok", "response": {}}]
    for client in (bo, cy):
        assert await client.recv() == ["1", None, "room:1", "say", {"from": "ann", "text": "psst"}]
    await ann.silent()


@pytest.mark.parametrize(
    "event, frames",
    [
        ("bye", [["1", "3", "room:1", "phx_reply", {"status": "ok", "response": {"bye": "ann"}}]]),
        ("quit", []),
    ],
)
async def test_stop_replies_then_closes_the_channel(connect, event, frames):
    ann, bo = await connect(), await connect()
    await join(ann, "room:1", {"nick": "ann"})
    await join(bo, "room:1", {"nick": "bo"})
    await ann.send("1", "3", "room:1", event, {})
    assert await ann.recv_many(len(frames) + 1) == [*frames, ["1", "1", "room:1", "phx_close", {}]]
    await ended("room:1", "stop")
    await bo.send("1", "4", "room:1", "shout", {"text": "still there?"})
    await bo.recv()
    await ann.silent()  # unsubscribed
    await ann.send("1", "5", "room:1", "ping", {})
    assert (await ann.recv())[4]["response"] == {"reason": "unmatched topic"}


async def test_a_crashing_handler_errors_that_topic_only_and_the_socket_lives_on(connect, caplog):
    client = await connect()
    await join(client, "room:1", {"nick": "ann"})
    await join(client, "lobby", join_ref="2")
    await client.send("1", "3", "room:1", "boom", {})
    assert await client.recv() == ["1", "1", "room:1", "phx_error", {}]
    assert "RoomChannel.handle_in failed on room:1" in caplog.text and "handler bug" in caplog.text
    await ended("room:1", "crash")
    # The other topic and the socket are fine; the crashed topic can be joined again (phoenix.js rejoins).
    await client.send("2", "4", "lobby", "publish", ["event", {"ok": True}])
    frames = await client.recv_many(2)  # the reply and the broadcast, in either order
    assert ["2", None, "lobby", "event", {"ok": True}] in frames
    assert ["2", "4", "lobby", "phx_reply", {"status": "ok", "response": {}}] in frames
    assert (await join(client, "room:1", {"nick": "ann"}, join_ref="5"))[4]["status"] == "ok"
    await client.send("5", "6", "room:1", "bad_answer", {})
    assert await client.recv() == ["5", "5", "room:1", "phx_error", {}]


async def test_every_end_of_a_channel_calls_terminate_once(connect):
    client = await connect()
    await join(client, "room:leave")
    await client.send("1", "2", "room:leave", "phx_leave", {})
    await client.recv_many(2)
    await join(client, "room:dup", join_ref="3")
    await join(client, "room:dup", join_ref="4")
    await client.recv()  # the second join's reply (the first channel's phx_close came before it)
    await join(client, "room:closed", join_ref="5")
    await client.ws.disconnect()
    for topic, reason in (
        ("room:leave", "leave"),
        ("room:dup", "rejoin"),
        ("room:dup", "closed"),
        ("room:closed", "closed"),
    ):
        await ended(topic, reason)
    assert len(channel_examples.ended) == 4, channel_examples.ended


async def test_the_rate_limit_covers_every_client_event(connect):
    client = await connect(publish_rate=0.001, publish_burst=2)
    await join(client, "room:1")
    for ref in ("2", "3"):
        await client.send("1", ref, "room:1", "ping", {})
        assert (await client.recv())[4]["status"] == "ok"
    await client.send("1", "4", "room:1", "ping", {})
    assert (await client.recv())[4] == {"status": "error", "response": {"reason": "rate limited"}}


# Through daphne, across nodes, with the phoenix client

CHANNELS_SETTING = "room:*=tests.channel_examples.RoomChannel,lobby=pubsub.channels.PublishChannel"


class Socket:
    """A raw websocket client on a real node."""

    def __init__(self, ws):
        self.ws = ws

    async def send(self, *frame):
        await self.ws.send(json.dumps(list(frame)))

    async def recv(self):
        return json.loads(await asyncio.wait_for(self.ws.recv(), 10))

    async def silent(self, seconds=0.5):
        with pytest.raises(asyncio.TimeoutError):
            frame = await asyncio.wait_for(self.ws.recv(), seconds)
            raise AssertionError(f"expected no frame, got {frame}")


@pytest.mark.processes
async def test_broadcast_from_skips_only_the_sender_across_nodes(cluster_factory):
    cluster = cluster_factory(DPS_CHANNELS=CHANNELS_SETTING)
    a, b = cluster.nodes["ws-a"], cluster.nodes["ws-b"]
    async with (
        websockets.connect(a.url()) as ann_ws,
        websockets.connect(a.url()) as cy_ws,
        websockets.connect(b.url()) as bo_ws,
    ):
        ann, cy, bo = Socket(ann_ws), Socket(cy_ws), Socket(bo_ws)
        for client, nick in ((ann, "ann"), (cy, "cy"), (bo, "bo")):
            await client.send("1", "1", "room:x", "phx_join", {"nick": nick})
            assert (await client.recv())[4]["status"] == "ok"
        await ann.send("1", "2", "room:x", "say", {"text": "psst"})
        assert await ann.recv() == ["1", "2", "room:x", "phx_reply", {"status": "ok", "response": {}}]
        for client in (cy, bo):
            assert await client.recv() == ["1", None, "room:x", "say", {"from": "ann", "text": "psst"}]
        await bo.send("1", "3", "room:x", "shout", {"text": "all"})
        for client in (ann, cy, bo):
            assert await client.recv() == ["1", None, "room:x", "shout", {"from": "bo", "text": "all"}]
        await ann.silent()


@pytest.mark.processes
@pytest.mark.node
async def test_the_phoenix_client_gets_replies_rejoins_after_a_crash_and_closes_on_stop(daphne_factory):
    node = daphne_factory(DPS_CHANNELS=CHANNELS_SETTING)
    modules = phoenix_js.install()
    async with websockets.connect(node.url()) as watcher_ws:
        watcher = Socket(watcher_ws)
        await watcher.send("1", "1", "room:js", "phx_join", {"nick": "watcher"})
        await watcher.recv()
        process = await asyncio.create_subprocess_exec(
            "node",
            str(Path(__file__).parent / "js" / "phoenix_channel.js"),
            f"ws://127.0.0.1:{node.port}/socket",
            "room:js",
            env={**os.environ, "NODE_PATH": str(modules)},
            stdout=asyncio.subprocess.PIPE,
        )
        events = []
        while not events or events[-1]["event"] not in ("channel_closed", "timeout"):
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, f"the phoenix client exited early after {events}"
            events.append(json.loads(line))
        await asyncio.wait_for(process.wait(), 10)
        assert [e["event"] for e in events] == [
            "joined",
            "pong",
            "channel_error",
            "joined",
            "shout",
            "bye",
            "channel_closed",
        ], events
        assert events[0]["response"] == {"nick": "js", "identity": None, "plan": None}
        assert events[1]["reply"] == {"pong": {"n": 1}}
        assert events[5]["reply"] == {"bye": "js"}
        assert await watcher.recv() == ["1", None, "room:js", "shout", {"from": "js", "text": "back"}]
    assert "RoomChannel.handle_in failed on room:js" in node.output()


@pytest.mark.processes
async def test_two_hundred_sockets_join_and_talk_at_once(cluster_factory):
    """A chat's shape: everyone joins at the same moment, then everyone speaks at once; each
    socket hears every other socket exactly once, and never itself."""
    cluster = cluster_factory(DPS_CHANNELS=CHANNELS_SETTING)
    urls = [cluster.nodes["ws-a"].url(), cluster.nodes["ws-b"].url()]
    count = 200
    sockets = await asyncio.gather(*(websockets.connect(urls[i % 2], max_queue=None) for i in range(count)))
    try:
        clients = [Socket(ws) for ws in sockets]

        async def join(i, client):
            await client.send("1", "1", "room:busy", "phx_join", {"nick": f"u{i}"})
            return await client.recv()

        replies = await asyncio.gather(*(join(i, c) for i, c in enumerate(clients)))
        assert all(reply[4]["status"] == "ok" for reply in replies), [r for r in replies if r[4]["status"] != "ok"]
        await asyncio.gather(*(c.send("1", "2", "room:busy", "say", {"n": i}) for i, c in enumerate(clients)))

        async def hear(i, client):
            heard, replied = [], False
            while len(heard) < count - 1 or not replied:
                frame = await client.recv()
                if frame[3] == "phx_reply":
                    assert frame[4]["status"] == "ok", frame
                    replied = True
                else:
                    heard.append(frame[4]["n"])
            return i, heard

        for i, heard in await asyncio.gather(*(hear(i, c) for i, c in enumerate(clients))):
            assert sorted(heard) == [n for n in range(count) if n != i], f"socket {i} heard {len(heard)}"
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
