"""V2 binary frames: phoenix.js sends a push whose payload is an ArrayBuffer as one, and decodes
binary replies, pushes and broadcasts (kind byte, field lengths, fields, raw bytes)."""

import asyncio
import json

import pytest
import websockets
from channels.testing import WebsocketCommunicator

from pubsub.core import protocol
from pubsub.exceptions import ProtocolError
from pubsub.socket.channel_routes import ChannelRoutes
from pubsub.socket.channels import Channel, PublishChannel, Reply
from tests import phoenix_js
from tests.test_consumers import TIMEOUT, app

PAYLOAD = bytes(range(256)) * 4  # every byte value, NULs and invalid UTF-8 included


def binary_push(join_ref, ref, topic, event, data):
    fields = [f.encode() for f in (join_ref, ref, topic, event)]
    return bytes([0, *map(len, fields)]) + b"".join(fields) + data


def test_the_layouts_are_phoenixs():
    assert binary_push("1", "2", "r:1", "up", b"\xab") == bytes.fromhex("00 01 01 03 02 31 32 72 3A 31 75 70 AB")
    frame = protocol.parse_binary(binary_push("1", "2", "r:1", "up", b"\xab"))
    assert frame == protocol.Frame("1", "2", "r:1", "up", b"\xab")
    assert protocol.encode_binary_broadcast("r:1", "up", b"\xab") == bytes.fromhex("02 03 02 72 3A 31 75 70 AB")
    assert protocol.encode_binary_reply("1", "2", "r:1", "ok", b"\xab") == bytes.fromhex(
        "01 01 01 03 02 31 32 72 3A 31 6F 6B AB"
    )
    assert protocol.encode_binary_push("1", "r:1", "up", b"\xab") == bytes.fromhex("00 01 03 02 31 72 3A 31 75 70 AB")


@pytest.mark.parametrize(
    "data", [b"", b"\x01\x00\x00\x00\x00", b"\x00\x05\x01\x01\x01ab", b"\x00\x00\x00\x02\x01\xff\xfex"]
)
def test_a_malformed_binary_frame_is_refused(data):
    with pytest.raises(ProtocolError):
        protocol.parse_binary(data)


class Echo(Channel):
    """Replies to a binary push with its bytes reversed, and pushes them back too."""

    async def handle_in(self, event, payload):
        if isinstance(payload, bytes):
            await self.push("echo", payload)
            return Reply.ok(payload[::-1])
        return await super().handle_in(event, payload)


ROUTES = ChannelRoutes([("echo:*", Echo), ("*", PublishChannel)])


async def socket(vsn="2.0.0"):
    communicator = WebsocketCommunicator(
        app(channel_routes=ROUTES, max_frame_bytes=4096), f"/socket/websocket?vsn={vsn}"
    )
    assert (await communicator.connect(TIMEOUT))[0]
    return communicator


async def join(communicator, topic, v1=False):
    if v1:
        await communicator.send_to(
            text_data=json.dumps({"topic": topic, "event": "phx_join", "payload": {}, "ref": "1"})
        )
    else:
        await communicator.send_to(text_data=json.dumps(["1", "1", topic, "phx_join", {}]))
    reply = json.loads(await communicator.receive_from(TIMEOUT))
    assert "ok" in json.dumps(reply), reply


async def test_a_binary_publish_reaches_every_v2_subscriber_byte_for_byte_and_no_v1_one():
    sender, other, v1 = await socket(), await socket(), await socket("1.0.0")
    try:
        for communicator in (sender, other):
            await join(communicator, "room:bin")
        await join(v1, "room:bin", v1=True)
        await sender.send_to(bytes_data=binary_push("1", "2", "room:bin", "publish", PAYLOAD))
        want = protocol.encode_binary_broadcast("room:bin", "publish", PAYLOAD)
        got = [await sender.receive_output(TIMEOUT), await sender.receive_output(TIMEOUT)]
        assert {"type": "websocket.send", "bytes": want} in got
        assert {
            "type": "websocket.send",
            "text": '["1","2","room:bin","phx_reply",{"status":"ok","response":{}}]',
        } in got
        assert await other.receive_output(TIMEOUT) == {"type": "websocket.send", "bytes": want}
        # The V1 socket has no binary form: it gets nothing for it, stays open and gets what follows.
        await sender.send_to(text_data='["1","3","room:bin","publish",["said",{"n":1}]]')
        v1_frame = json.loads(await v1.receive_from(TIMEOUT))
        assert v1_frame == {"topic": "room:bin", "event": "said", "payload": {"n": 1}, "ref": None}
    finally:
        for communicator in (sender, other, v1):
            await communicator.disconnect()


async def test_a_channel_class_gets_bytes_and_replies_and_pushes_binary():
    client = await socket()
    try:
        await join(client, "echo:1")
        await client.send_to(bytes_data=binary_push("1", "7", "echo:1", "anything", b"\x00\x01\x02"))
        got = [await client.receive_output(TIMEOUT), await client.receive_output(TIMEOUT)]
        assert {
            "type": "websocket.send",
            "bytes": protocol.encode_binary_push("1", "echo:1", "echo", b"\x00\x01\x02"),
        } in got
        assert {
            "type": "websocket.send",
            "bytes": protocol.encode_binary_reply("1", "7", "echo:1", "ok", b"\x02\x01\x00"),
        } in got
    finally:
        await client.disconnect()


@pytest.mark.parametrize(
    "vsn, data, code",
    [
        ("2.0.0", b"\x07junk", 4007),  # not a push
        ("2.0.0", binary_push("1", "2", "room:x", "publish", b"x" * 5000), 4009),  # over max_frame_bytes
        ("1.0.0", binary_push("1", "2", "room:x", "publish", b"x"), 4003),  # V1 has no binary frames
    ],
)
async def test_a_bad_binary_frame_closes_the_socket_with_a_clear_code(vsn, data, code):
    client = await socket(vsn)
    try:
        await client.send_to(bytes_data=data)
        assert await client.receive_output(TIMEOUT) == {"type": "websocket.close", "code": code}
    finally:
        await client.disconnect()


async def test_a_missed_binary_broadcast_is_recovered_from_history():
    first = await socket()
    await first.send_to(text_data=json.dumps(["1", "1", "room:kept", "phx_join", {"recover": True}]))
    epoch = json.loads(await first.receive_from(TIMEOUT))[4]["response"]["epoch"]
    await first.disconnect()
    publisher = await socket()
    try:
        await join(publisher, "room:kept")
        await publisher.send_to(bytes_data=binary_push("1", "2", "room:kept", "publish", PAYLOAD))
        want = protocol.encode_binary_broadcast("room:kept", "publish", PAYLOAD)
        assert want in [(await publisher.receive_output(TIMEOUT)).get("bytes") for _ in range(2)]
        back = await socket()
        try:
            await back.send_to(
                text_data=json.dumps(["2", "2", "room:kept", "phx_join", {"recover": {"epoch": epoch, "seq": 0}}])
            )
            reply = json.loads(await back.receive_from(TIMEOUT))
            assert reply[4]["response"]["recovered"] is True, reply
            assert await back.receive_output(TIMEOUT) == {"type": "websocket.send", "bytes": want}
        finally:
            await back.disconnect()
    finally:
        await publisher.disconnect()


@pytest.mark.processes
@pytest.mark.node
async def test_the_phoenix_client_pushes_an_arraybuffer_and_decodes_the_binary_broadcast(daphne_node):
    """phoenix.js's own binary layout, both ways, byte for byte; a raw V2 socket gets the same bytes."""
    modules = phoenix_js.install()
    data = bytes(range(256))
    async with websockets.connect(daphne_node.url()) as watcher:
        await watcher.send('["1","1","room:js-bin","phx_join",{}]')
        assert json.loads(await watcher.recv())[4]["status"] == "ok"
        client = await phoenix_js.PhoenixSession.run(
            modules, "phoenix_binary.js", f"ws://127.0.0.1:{daphne_node.port}/socket", "room:js-bin"
        )
        await client.wait_for("done")
        assert await asyncio.wait_for(client.process.wait(), 10) == 0
        events = client.events
        assert {"event": "broadcast", "arraybuffer": True, "hex": data.hex()} in events, events
        assert {"event": "reply", "reply": {}} in events, events
        assert await asyncio.wait_for(watcher.recv(), TIMEOUT) == protocol.encode_binary_broadcast(
            "room:js-bin", "publish", data
        )
