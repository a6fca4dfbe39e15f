"""The stream entries nodes and topic servers exchange, as msgpack arrays.

Inbox of a topic server (``dps:ts:{name}``):
    ["sub", topic, node]          node holds its first local member of topic
    ["unsub", topic, node]        node's last local member left
    ["pub", topic, message, origin]   a group_send; message is msgpack bytes, passed through untouched;
                                  origin ("node/process-token/counter") lets the owner drop an
                                  append that a retry repeated
    ["hello", node]               node (re)started: forget what it held, it re-announces
    ["fwd", topic, message, seq, origin]   a pub passed on by a server that does not own topic
                                  (any more); seq > 0 if a previous owner numbered it; origin is
                                  the pub's, so the owner drops repeated forwards
    ["track", topic, node, key, meta, quiet]   a socket of node is present in topic as key; meta has
                                  its unique phx_ref; quiet: a re-announcement clients already know
    ["untrack", topic, node, key, phx_ref]     that meta left
    ["plist", topic, reply_key]   who is present in topic? (the answer goes to reply_key, see put_reply)
    ["hist", topic, reply_key, after]   topic's kept messages after seq `after`, its epoch and last seq

Stream of a websocket node (``dps:node:{name}``):
    ["msg", topic, seq, message, epoch, generation]  one per node per published message, seq per
                                  topic from 1; epoch: the topic's history epoch ("" with history
                                  off); seq 0: not numbered (a presence change, which history does
                                  not keep); generation: the ring generation of the owner that
                                  numbered it (nodes drop an older one's, topicserver/fencing.py;
                                  UNKNOWN_GENERATION from a server before 0.14, which sent none)
    ["send", channel, message]    a send() to one channel living on this node
    ["gadd", group, channel] / ["gdiscard", group, channel]   group changes for a channel of this node
    ["owner", server, token, gen] a topic server (re)started or gained topics: adopt ring generation
                                  gen, re-announce its topics, then acknowledge token
    ["dropped", server]           server forgot this node's members (its heartbeat had expired):
                                  a node that reads this is alive, and re-announces them
    ["pstate", topic, state]      topic's whole presence, for a node that (re)subscribed; presence
                                  changes come as "msg" entries (a dps.presence message), in order
    ["tip", topic, seq]           topic's last number when its owner took this node's "sub": a node
                                  behind it (taken for dead while frozen) fills the gap from history

The message itself is encoded once by the publisher; the owner only wraps it.
"""

from __future__ import annotations

from typing import Any

import msgpack

from pubsub.exceptions import TransportError

__all__ = [
    "MalformedEntry",
    "pack",
    "unpack",
    "pack_message",
    "unpack_message",
    "INBOX_OPS",
    "NODE_OPS",
    "UNKNOWN_GENERATION",
]

# op -> number of fields after the op, with the type of each
INBOX_OPS = {
    "sub": (str, str),
    "unsub": (str, str),
    "pub": (str, bytes, str),
    "fwd": (str, bytes, int, str),
    "hello": (str,),
    "track": (str, str, str, dict, bool),
    "untrack": (str, str, str, str),
    "plist": (str, str),
    "hist": (str, str, int),
}
UNKNOWN_GENERATION = -(2**31)
# Fields added since: an entry of an older process without them gets these values (rolling upgrades).
_ADDED_FIELDS = {"msg": (UNKNOWN_GENERATION,)}
NODE_OPS = {
    "msg": (str, int, bytes, str, int),
    "send": (str, bytes),
    "gadd": (str, str),
    "gdiscard": (str, str),
    "owner": (str, str, int),
    "dropped": (str,),
    "pstate": (str, dict),
    "tip": (str, int),
}


class MalformedEntry(TransportError):
    """A stream entry that is not one of the known ops; it is logged, counted and skipped."""


def pack(*fields: Any) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def unpack(data: bytes, ops: dict[str, tuple]) -> list:
    """Decode and check one entry against the op table; raise MalformedEntry if it does not fit."""
    try:
        fields = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise MalformedEntry(f"undecodable entry: {exc}") from None
    if not isinstance(fields, list) or not fields or fields[0] not in ops:
        raise MalformedEntry(f"unknown entry: {fields!r:.80}")
    types = ops[fields[0]]
    added = _ADDED_FIELDS.get(fields[0], ())
    if added and len(fields) == len(types) + 1 - len(added):
        fields.extend(added)
    if len(fields) != len(types) + 1 or not all(isinstance(v, t) for v, t in zip(fields[1:], types, strict=True)):
        raise MalformedEntry(f"bad fields for {fields[0]!r}: {fields!r:.80}")
    return fields


def pack_message(message: dict) -> bytes:
    """A Channels message (a dict with a "type") as bytes."""
    return msgpack.packb(message, use_bin_type=True)


def unpack_message(data: bytes) -> dict:
    try:
        message = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise MalformedEntry(f"undecodable message: {exc}") from None
    if not isinstance(message, dict):
        raise MalformedEntry("message is not a map")
    return message
