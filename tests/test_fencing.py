"""The fences every transport keeps (topicserver/fencing.py): in memory, on one Redis, on a Redis Cluster.

A refused call must have written nothing: the refusal is what keeps a paused owner's numbers from
colliding with its successor's.
"""

import pytest

from pubsub.core import entries
from pubsub.transport.base import FENCED, OK, TAKEN, Numbering
from pubsub.transport.factory import redis_transport
from pubsub.transport.memory import MemoryTransport
from tests.processes import RedisClusterServer, RedisServer

TOPIC = "room:fenced"
SIZE, TTL = 100, 60.0


@pytest.fixture(scope="module")
def redis_kinds():
    started = {}

    def get(kind):
        if kind not in started:
            started[kind] = RedisServer() if kind == "redis" else RedisClusterServer(masters=3)
        return started[kind]

    yield get
    for server in started.values():
        server.stop()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def transport(request, redis_kinds):
    if request.param == "memory":
        made = MemoryTransport()
    else:
        server = redis_kinds(request.param)
        with server.client() as client:
            client.flushall()
        made = redis_transport(server.url)
    yield made
    await made.close()


def numbering(first, last, origins):
    kept = [(seq, origin, f"m-{origin}".encode()) for seq, origin in zip(range(first, last + 1), origins, strict=True)]
    return Numbering(TOPIC, first, last, kept, renew=True)


async def test_a_newer_generation_fences_an_older_one_which_writes_nothing(transport):
    assert await transport.number(2, [numbering(1, 2, ["a", "b"])], SIZE, TTL) == {TOPIC: (OK, 0)}
    assert await transport.number(1, [numbering(3, 3, ["stale"])], SIZE, TTL) == {TOPIC: (FENCED, 2)}
    assert await transport.load_sequences([TOPIC]) == {TOPIC: 2}
    assert [seq for seq, _ in await transport.history(TOPIC)] == [1, 2]
    assert await transport.number(3, [numbering(3, 3, ["c"])], SIZE, TTL) == {TOPIC: (OK, 0)}


async def test_a_number_already_used_is_refused_with_the_last_one(transport):
    assert await transport.number(1, [numbering(1, 3, ["a", "b", "c"])], SIZE, TTL) == {TOPIC: (OK, 0)}
    assert await transport.number(1, [numbering(2, 2, ["x"])], SIZE, TTL) == {TOPIC: (TAKEN, 3)}
    assert await transport.history(TOPIC) == [(1, b"m-a"), (2, b"m-b"), (3, b"m-c")]
    # A resend of stored numbers (no new one) passes, and adds nothing to the history.
    resend = Numbering(TOPIC, 0, 3, [])
    assert await transport.number(1, [resend], SIZE, TTL) == {TOPIC: (OK, 0)}
    assert len(await transport.history(TOPIC)) == 3


async def test_a_numbering_made_again_after_a_lost_reply_is_its_own_not_taken(transport):
    """A timeout or a failed fan-out after the numbers were stored makes the owner try the same batch
    again: it must be told its numbers are stored (once), not that they are taken, or it would number
    the same messages a second time and subscribers would get them twice."""
    batch = numbering(1, 2, ["a", "b"])
    assert await transport.number(1, [batch], SIZE, TTL) == {TOPIC: (OK, 0)}
    assert await transport.number(1, [batch], SIZE, TTL) == {TOPIC: (OK, 0)}
    assert await transport.history(TOPIC) == [(1, b"m-a"), (2, b"m-b")], "stored once"
    assert await transport.load_sequences([TOPIC]) == {TOPIC: 2}
    # The same numbers with other messages, or given by another generation, are someone else's.
    assert await transport.number(1, [numbering(1, 2, ["x", "y"])], SIZE, TTL) == {TOPIC: (TAKEN, 2)}
    await transport.claim_topics([TOPIC], 2)
    assert await transport.number(2, [batch], SIZE, TTL) == {TOPIC: (TAKEN, 2)}, "the fence is not a number"
    # And through commit, which fans out only what it stored: both attempts fan out (nodes drop the
    # repeat by its number), neither renumbers.
    stream = "dps:node:{ws-retry}"
    again = numbering(3, 3, ["c"])
    appends = [(stream, b"c", TOPIC)]
    for _ in range(2):
        verdicts, moved = await transport.commit("ts-retry", 2, [again], appends, "5-0", SIZE, TTL)
        assert (verdicts, moved) == ({TOPIC: (OK, 0)}, True)
    assert [seq for seq, _ in await transport.history(TOPIC)] == [1, 2, 3]
    assert len(await transport.read(stream, "0-0", 10, 0)) == 2


async def test_claiming_a_topic_fences_it_and_tells_what_was_numbered(transport):
    await transport.number(1, [numbering(1, 2, ["a", "b"])], SIZE, TTL)
    assert await transport.claim_topics([TOPIC, "room:empty"], 4) == {TOPIC: {"a": 1, "b": 2}, "room:empty": {}}
    assert await transport.number(3, [numbering(3, 3, ["late"])], SIZE, TTL) == {TOPIC: (FENCED, 4)}
    assert await transport.number(3, [Numbering("room:empty", 1, 1, [])], SIZE, TTL) == {"room:empty": (FENCED, 4)}
    # A claim never lowers a fence.
    await transport.claim_topics([TOPIC], 2)
    assert await transport.number(3, [numbering(3, 3, ["late"])], SIZE, TTL) == {TOPIC: (FENCED, 4)}


async def test_an_inbox_held_by_a_newer_generation_keeps_its_cursor(transport):
    stream = "dps:node:{ws-fence}"
    assert await transport.claim_inbox("ts-paused", 5) is None
    message = entries.pack("send", "dps.ws-fence!x", b"")
    assert await transport.deliver("ts-paused", 4, [(stream, message)], "9-0") is False
    assert await transport.load_cursor("ts-paused") is None
    assert len(await transport.read(stream, "0-0", 10, 0)) == 1, "the appends are made either way"
    assert await transport.deliver("ts-paused", 5, [], "9-0") is True
    assert await transport.claim_inbox("ts-paused", 6) == "9-0"
    assert await transport.deliver("ts-paused", 5, [], "10-0") is False
    assert await transport.load_cursor("ts-paused") == "9-0"


async def test_a_ring_proposal_goes_past_its_floor(transport):
    assert await transport.propose_ring(0, ["ts-1"]) == 1
    assert await transport.propose_ring(1, ["ts-1", "ts-2"], floor=7) == 8
    assert await transport.propose_ring(1, ["ts-1"]) is None, "the generation moved on"
    assert await transport.ring_state() == (8, ["ts-1", "ts-2"])
