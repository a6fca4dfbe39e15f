"""The Phoenix socket consumer, driven through Channels' WebsocketCommunicator."""

import json

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from pubsub.socket.consumer import PhoenixSocket

TIMEOUT = 3


def refuse_secret(scope, topic, params):
    if topic.startswith("secret:"):
        return "unauthorized"
    if topic.startswith("detailed:"):
        return {"reason": "banned", "until": "tomorrow"}
    if topic.startswith("boom:"):
        raise RuntimeError("authorizer bug")
    return True


async def refuse_async(scope, topic, params):
    return params.get("token") == "good"


def app(**options):
    options.setdefault("join_authorizer", refuse_secret)
    return PhoenixSocket.as_asgi(**options)


class Client:
    """A raw websocket client speaking JSON arrays."""

    def __init__(self, communicator):
        self.ws = communicator

    async def send(self, *frame):
        await self.ws.send_to(text_data=json.dumps(list(frame)))

    async def send_text(self, text):
        await self.ws.send_to(text_data=text)

    async def recv(self):
        return json.loads(await self.ws.receive_from(TIMEOUT))

    async def recv_many(self, count):
        return [await self.recv() for _ in range(count)]

    async def silent(self):
        assert await self.ws.receive_nothing(0.2), "expected no frame"

    async def join(self, topic, join_ref="1"):
        await self.send(join_ref, join_ref, topic, "phx_join", {})
        reply = await self.recv()
        assert reply == [join_ref, join_ref, topic, "phx_reply", {"status": "ok", "response": {}}]


@pytest.fixture
async def connect():
    opened = []

    async def open_socket(path="/socket/websocket?vsn=2.0.0", application=None, subprotocols=None):
        communicator = WebsocketCommunicator(application or app(), path, subprotocols=subprotocols)
        connected, subprotocol = await communicator.connect(TIMEOUT)
        assert connected, f"connect refused for {path}"
        opened.append(communicator)
        client = Client(communicator)
        client.subprotocol = subprotocol
        return client

    yield open_socket
    for communicator in opened:
        await communicator.disconnect()
    await get_channel_layer().flush()


async def test_join_subscribes_before_replying(connect):
    client = await connect()
    await client.join("topics:matrix")
    assert get_channel_layer().local_members("topics:matrix") == 1


async def test_heartbeat_reply_echoes_the_string_ref(connect):
    client = await connect()
    await client.send(None, "42", "phoenix", "heartbeat", {})
    assert await client.recv() == [None, "42", "phoenix", "phx_reply", {"status": "ok", "response": {}}]


async def test_publish_reaches_every_subscriber_with_their_join_ref(connect):
    alice, bob = await connect(), await connect()
    await alice.join("topics:matrix", "7")
    await bob.join("topics:matrix", "1")
    await bob.send("1", "2", "topics:matrix", "publish", ["event", {"message": "red pill or blue pill?"}])
    frames = await bob.recv_many(2)
    assert ["1", "2", "topics:matrix", "phx_reply", {"status": "ok", "response": {}}] in frames
    assert ["1", None, "topics:matrix", "event", {"message": "red pill or blue pill?"}] in frames
    assert await alice.recv() == ["7", None, "topics:matrix", "event", {"message": "red pill or blue pill?"}]
    await alice.silent()


async def test_duplicate_join_replaces_the_first(connect):
    client = await connect()
    await client.join("room", "1")
    await client.send("3", "3", "room", "phx_join", {})
    assert await client.recv_many(2) == [
        ["1", "1", "room", "phx_close", {}],
        ["3", "3", "room", "phx_reply", {"status": "ok", "response": {}}],
    ]
    assert get_channel_layer().local_members("room") == 1
    await client.send("3", "4", "room", "publish", ["e", {}])
    frames = await client.recv_many(2)
    assert ["3", None, "room", "e", {}] in frames
    await client.silent()


async def test_leave_replies_then_closes_and_stops_delivery(connect):
    leaver, stayer = await connect(), await connect()
    await leaver.join("room", "1")
    await stayer.join("room", "1")
    await leaver.send("1", "2", "room", "phx_leave", {})
    assert await leaver.recv_many(2) == [
        ["1", "2", "room", "phx_reply", {"status": "ok", "response": {}}],
        ["1", "1", "room", "phx_close", {}],
    ]
    await stayer.send("1", "2", "room", "publish", ["e", {"n": 1}])
    await stayer.recv_many(2)
    await leaver.silent()


async def test_leave_of_a_topic_not_joined_is_ok(connect):
    client = await connect()
    await client.send("9", "10", "never", "phx_leave", {})
    assert await client.recv() == ["9", "10", "never", "phx_reply", {"status": "ok", "response": {}}]
    await client.silent()


async def test_message_to_a_topic_not_joined(connect):
    client = await connect()
    await client.send("1", "5", "nowhere", "publish", ["e", {}])
    assert await client.recv() == [
        None,
        "5",
        "nowhere",
        "phx_reply",
        {"status": "error", "response": {"reason": "unmatched topic"}},
    ]


async def test_stale_join_ref_is_ignored(connect):
    client = await connect()
    await client.join("room", "2")
    await client.send("1", "5", "room", "publish", ["e", {}])
    await client.silent()


async def test_unknown_event_on_a_joined_topic(connect):
    client = await connect()
    await client.join("room")
    await client.send("1", "5", "room", "shout", {})
    reply = await client.recv()
    assert reply[:4] == ["1", "5", "room", "phx_reply"]
    assert reply[4]["status"] == "error"


@pytest.mark.parametrize(
    "payload",
    [
        {"event": "e"},
        ["e"],
        ["e", {}, "extra"],
        [5, {}],
        ["e", "not an object"],
        ["e", None],
        ["", {}],
        ["phx_close", {}],
    ],
)
async def test_bad_publish_payloads_get_an_error_and_nothing_is_sent(connect, payload):
    client = await connect()
    await client.join("room")
    await client.send("1", "5", "room", "publish", payload)
    reply = await client.recv()
    assert reply[:4] == ["1", "5", "room", "phx_reply"] and reply[4]["status"] == "error"
    await client.silent()


@pytest.mark.parametrize("text", ["not json", "{}", '["1","1","t"]', '["1","1",5,"phx_join",{}]'])
async def test_unaddressable_frames_close_the_socket(connect, text):
    client = await connect()
    await client.send_text(text)
    assert await client.ws.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4007}


async def test_frames_with_wrong_types_get_an_error_reply(connect):
    client = await connect()
    await client.send_text('[1, 2, "room", "phx_join", {}]')
    assert await client.recv() == [
        1,
        2,
        "room",
        "phx_reply",
        {"status": "error", "response": {"reason": "join_ref must be a string or null"}},
    ]


async def test_oversized_frame_closes_the_socket(connect):
    client = await connect(application=app(max_frame_bytes=1024))
    await client.send("1", "1", "room", "publish", ["e", {"blob": "x" * 2000}])
    assert await client.ws.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4009}


async def test_a_malformed_binary_frame_closes_the_socket(connect):
    """(Binary pushes themselves: tests/test_binary_frames.py.)"""
    client = await connect()
    await client.ws.send_to(bytes_data=b"\x00\x01")
    assert await client.ws.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4007}


async def test_channel_limit_per_socket(connect):
    client = await connect(application=app(max_channels=2))
    await client.join("a")
    await client.join("b")
    await client.send("3", "3", "c", "phx_join", {})
    assert await client.recv() == [
        "3",
        "3",
        "c",
        "phx_reply",
        {"status": "error", "response": {"reason": "too many channels joined"}},
    ]
    await client.send("4", "4", "a", "phx_join", {})  # a rejoin does not count twice
    assert (await client.recv_many(2))[1] == ["4", "4", "a", "phx_reply", {"status": "ok", "response": {}}]


@pytest.mark.parametrize(
    "topic, response",
    [
        ("secret:1", {"reason": "unauthorized"}),
        ("detailed:1", {"reason": "banned", "until": "tomorrow"}),
        ("boom:1", {"reason": "join crashed"}),
    ],
)
async def test_join_authorizer_can_refuse(connect, topic, response):
    client = await connect()
    await client.send("1", "1", topic, "phx_join", {})
    assert await client.recv() == ["1", "1", topic, "phx_reply", {"status": "error", "response": response}]
    assert get_channel_layer().local_members(topic) == 0


async def test_async_join_authorizer(connect):
    client = await connect(application=app(join_authorizer=refuse_async))
    await client.send("1", "1", "room", "phx_join", {"token": "bad"})
    assert (await client.recv())[4] == {"status": "error", "response": {"reason": "unauthorized"}}
    await client.send("2", "2", "room", "phx_join", {"token": "good"})
    assert (await client.recv())[4] == {"status": "ok", "response": {}}


@pytest.mark.parametrize("topic", ["has space", "", "phoenix"])
async def test_invalid_topics_are_unmatched(connect, topic):
    client = await connect()
    await client.send("1", "1", topic, "phx_join", {})
    assert await client.recv() == [
        None,
        "1",
        topic,
        "phx_reply",
        {"status": "error", "response": {"reason": "unmatched topic"}},
    ]


@pytest.mark.parametrize("query", ["vsn=3.0.0", "vsn=2.1.0", "vsn=1.1.0", "vsn=2.0", "vsn=garbage"])
async def test_other_serializer_versions_are_refused(query):
    communicator = WebsocketCommunicator(app(), f"/socket/websocket?{query}")
    connected, code = await communicator.connect(TIMEOUT)
    assert not connected


async def test_phoenix_subprotocol_is_accepted(connect):
    client = await connect(subprotocols=["phoenix", "base64url.bearer.phx.dG9rZW4"])
    assert client.subprotocol == "phoenix"


async def test_idle_socket_is_closed(connect):
    client = await connect(application=app(idle_timeout=0.3))
    assert await client.ws.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4001}


async def test_heartbeats_keep_an_idle_socket_open(connect):
    client = await connect(application=app(idle_timeout=1.0))
    for ref in range(4):  # 2 s in all, twice the timeout
        await client.send(None, str(ref), "phoenix", "heartbeat", {})
        assert (await client.recv())[1] == str(ref)
        assert await client.ws.receive_nothing(0.5)
