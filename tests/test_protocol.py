"""Table tests of the pure Phoenix V2 frame module."""

import pytest

from pubsub.core import protocol
from pubsub.exceptions import ProtocolError


@pytest.mark.parametrize(
    "text, expected",
    [
        ('["1","1","topics:matrix","phx_join",{}]', ("1", "1", "topics:matrix", "phx_join", {})),
        ('[null,"5","phoenix","heartbeat",{}]', (None, "5", "phoenix", "heartbeat", {})),
        ('["3","4","t","publish",["e",{"a":1}]]', ("3", "4", "t", "publish", ["e", {"a": 1}])),
        ('["1","2","t","phx_leave",{}]', ("1", "2", "t", "phx_leave", {})),
        ('["1",null,"t","x",null]', ("1", None, "t", "x", None)),
        ('["1","1","t","phx_join",{},"extra",7]', ("1", "1", "t", "phx_join", {})),
        ('[ "1" , "1" , "t" , "e" , "any json" ]', ("1", "1", "t", "e", "any json")),
    ],
)
def test_parse_valid_frames(text, expected):
    assert tuple(protocol.parse(text)) == expected


@pytest.mark.parametrize(
    "text, reason, replyable",
    [
        ("not json", "invalid JSON", False),
        ("", "invalid JSON", False),
        ('{"topic":"t"}', "frame must be a JSON array", False),
        ('"a string"', "frame must be a JSON array", False),
        ('["1","1","t","phx_join"]', "frame must have 5 elements", False),
        ("[]", "frame must have 5 elements", False),
        ('["1","1",5,"phx_join",{}]', "topic must be a string", False),
        ('["1","1",null,"phx_join",{}]', "topic must be a string", False),
        ('["1","1","t",7,{}]', "event must be a string", True),
        ('[1,"1","t","phx_join",{}]', "join_ref must be a string or null", True),
        ('["1",2,"t","phx_join",{}]', "ref must be a string or null", True),
    ],
)
def test_parse_invalid_frames(text, reason, replyable):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse(text)
    assert caught.value.reason.startswith(reason)
    assert caught.value.replyable is replyable


def test_error_keeps_refs_as_sent_for_the_reply():
    with pytest.raises(ProtocolError) as caught:
        protocol.parse('["1",2,"t","phx_join",{}]')
    assert (caught.value.join_ref, caught.value.ref, caught.value.topic) == ("1", 2, "t")


@pytest.mark.parametrize(
    "args, expected",
    [
        (("1", "1", "t", "ok"), '["1","1","t","phx_reply",{"status":"ok","response":{}}]'),
        ((None, "7", "phoenix", "ok"), '[null,"7","phoenix","phx_reply",{"status":"ok","response":{}}]'),
        (
            (None, "2", "t", "error", {"reason": "unmatched topic"}),
            '[null,"2","t","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]',
        ),
    ],
)
def test_encode_reply(args, expected):
    assert protocol.encode_reply(*args) == expected


def test_encode_push():
    assert protocol.encode_push("3", "t", "presence_state", {"a": {}}) == '["3",null,"t","presence_state",{"a":{}}]'
    assert protocol.encode_push("3", "t", "phx_close") == '["3",null,"t","phx_close",{}]'


def test_broadcast_is_encoded_once_and_prefixed_per_receiver():
    tail = protocol.encode_broadcast_tail("topics:matrix", "event", {"message": "red pill or blue pill?"})
    seed = '["1",null,"topics:matrix","event",{"message":"red pill or blue pill?"}]'
    assert protocol.broadcast_frame('"1"', {"tail": tail}) == seed
    assert protocol.broadcast_frame("null", {"tail": tail}) == seed.replace('"1"', "null", 1)


def test_non_ascii_is_sent_as_utf8_text():
    tail = protocol.encode_broadcast_tail("t", "e", {"m": "héllo ✓"})
    assert protocol.broadcast_frame("null", {"tail": tail}) == '[null,null,"t","e",{"m":"héllo ✓"}]'


@pytest.mark.parametrize(
    "topic, valid",
    [
        ("topics:matrix", True),
        ("room:42/sub-topic.x", True),
        ("x", True),
        ("", False),
        ("has space", False),
        ("tab\there", False),
        ("new\nline", False),
        ("x" * 255, True),
        ("x" * 256, False),
        ("ünïcödé:topic", True),
    ],
)
def test_valid_topic(topic, valid):
    assert protocol.valid_topic(topic) is valid
