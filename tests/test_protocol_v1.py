"""The V1 JSON serializer (vsn 1.0.0, and a socket with no vsn): frames as objects, on a real socket."""

import json

import orjson
import pytest
from channels.testing import WebsocketCommunicator

from pubsub.core import protocol, protocol_v1
from pubsub.exceptions import ProtocolError
from pubsub.socket.consumer import serializer_for
from tests.test_consumers import TIMEOUT, app

SEED_BROADCAST = {
    "topic": "topics:matrix",
    "event": "event",
    "payload": {"message": "red pill or blue pill?"},
    "ref": None,
}


@pytest.mark.parametrize(
    "vsn, serializer",
    [
        ("1.0.0", protocol_v1),
        ("1.0.7", protocol_v1),
        ("2.0.0", protocol),
        ("2.0.3", protocol),
        ("2.1.0", None),
        ("1", None),
    ],
)
def test_the_serializer_is_chosen_as_phoenix_matches_versions(vsn, serializer):
    assert serializer_for(vsn) is serializer


def test_a_v1_frame_is_an_object_with_topic_event_payload_and_ref():
    frame = protocol_v1.parse('{"topic":"room:1","event":"phx_join","payload":{},"ref":"1"}')
    assert frame == protocol.Frame(None, "1", "room:1", "phx_join", {})
    assert protocol_v1.parse('{"topic":"t","event":"e","payload":1,"ref":null,"join_ref":"4"}').join_ref == "4"


@pytest.mark.parametrize(
    "text, reason",
    [
        ('["1","1","t","e",{}]', "a V1 frame must be a JSON object"),
        ('{"topic":"t","event":"e","payload":{}}', "missing ref"),
        ('{"topic":1,"event":"e","payload":{},"ref":null}', "topic must be a string"),
        ("{", "invalid JSON"),
    ],
)
def test_a_bad_v1_frame_says_what_is_wrong(text, reason):
    with pytest.raises(ProtocolError, match=reason):
        protocol_v1.parse(text)


def test_v1_replies_and_broadcasts_never_carry_a_join_ref():
    reply = protocol_v1.encode_reply("5", "1", "room:1", "ok", {})
    assert orjson.loads(reply) == {
        "topic": "room:1",
        "event": "phx_reply",
        "payload": {"status": "ok", "response": {}},
        "ref": "1",
    }
    message = {"tail": protocol.encode_broadcast_tail("topics:matrix", "event", {"message": "red pill or blue pill?"})}
    first = protocol_v1.broadcast_frame('"5"', message)
    assert orjson.loads(first) == SEED_BROADCAST
    assert protocol_v1.broadcast_frame('"6"', message) is first, "encoded once per node, for every V1 socket"
    recovering = orjson.loads(protocol_v1.broadcast_frame_with_ref('"5"', "e1", 7, message))
    assert recovering == {**SEED_BROADCAST, "ref": "e1:7"}
    state = orjson.loads(protocol_v1.presence_state_frame("5", "room:1", '{"u":{"metas":[]}}'))
    assert state == {"topic": "room:1", "event": "presence_state", "payload": {"u": {"metas": []}}, "ref": None}


async def v1_socket(query: str):
    communicator = WebsocketCommunicator(app(), f"/socket/websocket{query}")
    connected, _ = await communicator.connect(TIMEOUT)
    assert connected, f"a V1 socket ({query or 'no vsn'}) was refused"
    return communicator


async def send(communicator, **frame):
    await communicator.send_to(text_data=json.dumps(frame))


async def receive(communicator):
    return json.loads(await communicator.receive_from(TIMEOUT))


@pytest.mark.parametrize("query", ["?vsn=1.0.0", ""])
async def test_the_seeds_example_works_in_v1_beside_a_v2_socket(query):
    """A V1 socket (or one naming no vsn) joins, publishes and receives as a V2 one does."""
    v1 = await v1_socket(query)
    v2 = WebsocketCommunicator(app(), "/socket/websocket?vsn=2.0.0")
    assert (await v2.connect(TIMEOUT))[0]
    try:
        await send(v1, topic="topics:matrix", event="phx_join", payload={}, ref="1")
        assert await receive(v1) == {
            "topic": "topics:matrix",
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {}},
            "ref": "1",
        }
        await v2.send_to(text_data='["1","1","topics:matrix","phx_join",{}]')
        assert json.loads(await v2.receive_from(TIMEOUT))[4]["status"] == "ok"
        await send(
            v1,
            topic="topics:matrix",
            event="publish",
            payload=["event", {"message": "red pill or blue pill?"}],
            ref="2",
        )
        got = [await receive(v1), await receive(v1)]
        assert SEED_BROADCAST in got, got
        assert {
            "topic": "topics:matrix",
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {}},
            "ref": "2",
        } in got
        assert (
            await v2.receive_from(TIMEOUT) == '["1",null,"topics:matrix","event",{"message":"red pill or blue pill?"}]'
        )
        await send(v1, topic="phoenix", event="heartbeat", payload={}, ref="3")
        assert await receive(v1) == {
            "topic": "phoenix",
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {}},
            "ref": "3",
        }
        await v1.send_to(text_data='["1","4","topics:matrix","publish",["event",{}]]')  # a V2 frame on V1
        assert (await v1.receive_output(TIMEOUT))["type"] == "websocket.close"
    finally:
        await v1.disconnect()
        await v2.disconnect()


async def test_a_v1_recovering_join_gets_refs_with_the_owners_numbers():
    v1 = await v1_socket("?vsn=1.0.0")
    try:
        await send(v1, topic="room:v1", event="phx_join", payload={"recover": True}, ref="1")
        reply = await receive(v1)
        assert reply["payload"]["status"] == "ok" and reply["payload"]["response"]["recovered"] is False
        epoch = reply["payload"]["response"]["epoch"]
        await send(v1, topic="room:v1", event="publish", payload=["said", {"n": 1}], ref="2")
        got = [await receive(v1), await receive(v1)]
        assert {"topic": "room:v1", "event": "said", "payload": {"n": 1}, "ref": f"{epoch}:1"} in got, got
    finally:
        await v1.disconnect()
