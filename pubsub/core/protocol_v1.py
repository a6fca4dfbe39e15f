"""Phoenix Channels V1 JSON frames (vsn 1.0.0, and a socket that names no vsn, as Phoenix does):
each message one object, ``{"topic", "event", "payload", "ref", "join_ref"}``. No I/O.

Inbound, ``topic``, ``event``, ``payload`` and ``ref`` must be present (``ref`` may be null) and
``join_ref`` may be. Outbound frames never carry ``join_ref``, so a broadcast is the same text for
every V1 socket: it is encoded once per node and kept on the shared layer message (``"v1"``).
V1 has no binary form. The functions match ``protocol``'s, so a socket holds either module.
"""

from __future__ import annotations

from typing import Any

import orjson

from pubsub.core.protocol import PHOENIX_TOPIC, Frame, encode_json
from pubsub.exceptions import ProtocolError

__all__ = [
    "VSN",
    "parse",
    "encode_reply",
    "encode_frame",
    "encode_push",
    "broadcast_frame",
    "broadcast_frame_with_ref",
    "presence_state_frame",
    "PHOENIX_TOPIC",
]

VSN = "1.0.0"
_REQUIRED = ("topic", "event", "payload", "ref")
_NULL_REF = '"ref":null}'


def parse(text: str) -> Frame:
    """Decode one V1 text frame, or raise ProtocolError saying what is wrong."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("invalid JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("a V1 frame must be a JSON object")
    missing = [key for key in _REQUIRED if key not in value]
    if missing:
        raise ProtocolError(f"a V1 frame needs topic, event, payload and ref (missing {', '.join(missing)})")
    topic, event, ref, join_ref = value["topic"], value["event"], value["ref"], value.get("join_ref")
    if not isinstance(topic, str):
        raise ProtocolError("topic must be a string")
    if not (ref is None or isinstance(ref, str)):
        raise ProtocolError("ref must be a string or null", ref=None, topic=topic)
    if not isinstance(event, str):
        raise ProtocolError("event must be a string", ref=ref, topic=topic)
    if not (join_ref is None or isinstance(join_ref, str)):
        raise ProtocolError("join_ref must be a string or null", ref=ref, topic=topic)
    return Frame(join_ref, ref, topic, event, value["payload"])


def encode_frame(join_ref: Any, ref: Any, topic: str, event: str, payload: dict | None = None) -> str:
    """``{"topic", "event", "payload", "ref"}`` (ref last, so a broadcast's can be filled in)."""
    return encode_json({"topic": topic, "event": event, "payload": payload or {}, "ref": ref})


def encode_reply(join_ref: Any, ref: Any, topic: str, status: str, response: dict | None = None) -> str:
    return encode_frame(None, ref, topic, "phx_reply", {"status": status, "response": response or {}})


def encode_push(join_ref: str | None, topic: str, event: str, payload: dict | None = None) -> str:
    return encode_frame(None, None, topic, event, payload)


def broadcast_frame(encoded_join_ref: str, message: dict) -> str | None:
    """The broadcast's V1 frame, encoded once for every V1 socket of the node; None for a binary
    broadcast (V1 has no binary form: a V1 socket does not get it)."""
    if "binary" in message:
        return None
    frame = message.get("v1")
    if frame is None:
        _, _, topic, event, payload = orjson.loads("[null" + message["tail"])
        frame = message["v1"] = encode_frame(None, None, topic, event, payload)
    return frame


def broadcast_frame_with_ref(encoded_join_ref: str, epoch: str, seq: int, message: dict) -> str | None:
    """For a recovering join, the ref is ``"<epoch>:<seq>"``, as in V2."""
    frame = broadcast_frame(encoded_join_ref, message)
    if frame is None:
        return None
    return frame[: -len(_NULL_REF)] + '"ref":"' + epoch + ":" + str(seq) + '"}'


def presence_state_frame(join_ref: str | None, topic: str, state_json: str) -> str:
    return '{"topic":' + encode_json(topic) + ',"event":"presence_state","payload":' + state_json + ',"ref":null}'
