"""Phoenix Channels V2 JSON frames (vsn 2.0.0): parse, validate and encode. No I/O.

A frame is the JSON array ``[join_ref, ref, topic, event, payload]``. Replies and
pushes are always encoded with compact separators, so the bytes a client sees are
stable (the seed's example is compared byte for byte).

A socket speaks one serializer, this module or ``protocol_v1`` (vsn 1.0.0): both offer
``parse``, ``encode_reply``, ``encode_frame``, ``encode_push``, ``broadcast_frame``,
``broadcast_frame_with_ref`` and ``presence_state_frame``, so the socket holds the module.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from pubsub.exceptions import ProtocolError

__all__ = [
    "Frame",
    "PHOENIX_TOPIC",
    "parse",
    "encode_json",
    "encode_reply",
    "encode_push",
    "encode_frame",
    "encode_broadcast_tail",
    "broadcast_frame",
    "broadcast_frame_with_ref",
    "presence_state_frame",
    "parse_binary",
    "encode_binary_push",
    "encode_binary_reply",
    "encode_binary_broadcast",
    "VSN",
    "valid_topic",
    "MAX_TOPIC_LENGTH",
]

VSN = "2.0.0"
PHOENIX_TOPIC = "phoenix"
MAX_TOPIC_LENGTH = 255


class Frame(NamedTuple):
    """One decoded client frame."""

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any


def encode_json(value: Any) -> str:
    """Compact JSON as text (what a websocket text frame carries)."""
    return orjson.dumps(value).decode()


def parse(text: str) -> Frame:
    """Decode one text frame, or raise ProtocolError saying what is wrong.

    Like Phoenix, elements past the fifth are ignored. join_ref and ref must be
    strings or null: the client compares them with ``===`` against strings, so a
    number could never be matched anyway.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("invalid JSON") from None
    if not isinstance(value, list):
        raise ProtocolError("frame must be a JSON array")
    if len(value) < 5:
        raise ProtocolError("frame must have 5 elements: [join_ref, ref, topic, event, payload]")
    join_ref, ref, topic, event, payload = value[:5]
    if not isinstance(topic, str):
        raise ProtocolError("topic must be a string")
    if not isinstance(event, str):
        raise ProtocolError("event must be a string", join_ref=join_ref, ref=ref, topic=topic)
    if not (join_ref is None or isinstance(join_ref, str)):
        raise ProtocolError("join_ref must be a string or null", join_ref=join_ref, ref=ref, topic=topic)
    if not (ref is None or isinstance(ref, str)):
        raise ProtocolError("ref must be a string or null", join_ref=join_ref, ref=ref, topic=topic)
    return Frame(join_ref, ref, topic, event, payload)


def valid_topic(topic: str) -> bool:
    """A topic is 1..255 printable characters with no whitespace."""
    return 0 < len(topic) <= MAX_TOPIC_LENGTH and topic.isprintable() and not any(c.isspace() for c in topic)


def encode_reply(join_ref: Any, ref: Any, topic: str, status: str, response: dict | None = None) -> str:
    """``[join_ref, ref, topic, "phx_reply", {"status": s, "response": r}]``."""
    return encode_json([join_ref, ref, topic, "phx_reply", {"status": status, "response": response or {}}])


def encode_frame(join_ref: Any, ref: Any, topic: str, event: str, payload: dict | None = None) -> str:
    """``[join_ref, ref, topic, event, payload]``."""
    return encode_json([join_ref, ref, topic, event, payload or {}])


def encode_push(join_ref: str | None, topic: str, event: str, payload: dict | None = None) -> str:
    """A server push to one channel: ``[join_ref, null, topic, event, payload]``."""
    return encode_json([join_ref, None, topic, event, payload or {}])


def encode_broadcast_tail(topic: str, event: str, payload: dict) -> str:
    """Everything of a broadcast frame after its join_ref: ``,null,topic,event,payload]``.

    A broadcast is encoded once; each receiver only prefixes ``[`` and its own
    encoded join_ref (see broadcast_frame), so no subscriber costs a JSON encode.
    """
    return "," + encode_json([None, topic, event, payload])[1:]


def broadcast_frame(encoded_join_ref: str, message: dict) -> str | bytes:
    """A broadcast layer message (its pre-encoded ``tail``) as one join's frame; a binary one is
    the same bytes for every receiver."""
    binary = message.get("binary")
    if binary is not None:
        return binary
    return "[" + encoded_join_ref + message["tail"]


def broadcast_frame_with_ref(encoded_join_ref: str, epoch: str, seq: int, message: dict) -> str | bytes:
    """A broadcast for a recovering join: its ref is ``"<epoch>:<seq>"`` where the tail has null
    (a string with a colon is never a number the client could confuse with its own refs). A binary
    broadcast has no ref: it goes as it is (the client learns positions from text broadcasts)."""
    binary = message.get("binary")
    if binary is not None:
        return binary
    return "[" + encoded_join_ref + ',"' + epoch + ":" + str(seq) + '"' + message["tail"][5:]


def presence_state_frame(join_ref: str | None, topic: str, state_json: str) -> str:
    """``[join_ref, null, topic, "presence_state", state]`` around a state encoded once per change."""
    return encode_json([join_ref, None, topic, "presence_state"])[:-1] + "," + state_json + "]"


# V2 binary frames (phoenix.js sends a push whose payload is an ArrayBuffer as one): a kind byte,
# one byte per field length (so each field is at most 255 bytes), the fields, then the raw payload.
BINARY_PUSH, BINARY_REPLY, BINARY_BROADCAST = 0, 1, 2


def parse_binary(data: bytes) -> Frame:
    """A client's binary push, ``00 jrLen refLen topicLen eventLen join_ref ref topic event data``,
    as a Frame whose payload is the bytes; ProtocolError for anything else."""
    if len(data) < 5 or data[0] != BINARY_PUSH:
        raise ProtocolError("a binary frame must be a push: kind 0, then four field lengths")
    lengths = data[1:5]
    end = 5 + sum(lengths)
    if len(data) < end:
        raise ProtocolError("binary frame shorter than its field lengths")
    fields, at = [], 5
    for length in lengths:
        try:
            fields.append(data[at : at + length].decode())
        except UnicodeDecodeError:
            raise ProtocolError("binary frame fields must be UTF-8") from None
        at += length
    join_ref, ref, topic, event = fields
    return Frame(join_ref or None, ref or None, topic, event, data[end:])


def _binary(kind: int, fields: tuple[str, ...], data: bytes) -> bytes:
    encoded = [field.encode() for field in fields]
    if any(len(field) > 255 for field in encoded):
        raise ProtocolError("a binary frame's join_ref, ref, topic, event and status are at most 255 bytes each")
    return bytes([kind, *map(len, encoded)]) + b"".join(encoded) + data


def encode_binary_push(join_ref: str | None, topic: str, event: str, data: bytes) -> bytes:
    """``00 jrLen topicLen eventLen join_ref topic event data`` (a server push has no ref)."""
    return _binary(BINARY_PUSH, (join_ref or "", topic, event), data)


def encode_binary_reply(join_ref: str | None, ref: str | None, topic: str, status: str, data: bytes) -> bytes:
    """``01 jrLen refLen topicLen statusLen join_ref ref topic status data``."""
    return _binary(BINARY_REPLY, (join_ref or "", ref or "", topic, status), data)


def encode_binary_broadcast(topic: str, event: str, data: bytes) -> bytes:
    """``02 topicLen eventLen topic event data``: no join_ref, the same bytes for every receiver."""
    return _binary(BINARY_BROADCAST, (topic, event), data)
