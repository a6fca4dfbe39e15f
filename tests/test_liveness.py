"""A busy node is not a dead node; a node taken for dead while alive comes back by itself.

A real topic server process and Redis; the node is a TopicRingLayer in this test's
event loop, so the test can do to it what overload does to a daphne node: hold
its event loop for seconds (one long synchronous delivery batch).
"""

import asyncio
import time

import pytest

from pubsub.layer import TopicRingLayer
from tests.processes import TopicServerProcess

pytestmark = pytest.mark.processes

TTL = 1.0
TOPIC = "room:busy"


@pytest.fixture
async def node_and_owner(redis_server):
    owner = TopicServerProcess("ts-1", redis_server, DPS_LIVENESS_TTL=str(TTL))
    layer = TopicRingLayer(
        node="ws-t", topic_servers=["ts-1"], redis_url=redis_server.url, liveness_ttl=TTL, live_ring=True
    )
    try:
        channel = await layer.new_channel()
        await layer.group_add(TOPIC, channel)
        await _delivered(layer, channel, "before")
        yield layer, channel, owner
    finally:
        await layer.close()
        owner.stop()


async def _delivered(layer, channel, marker, timeout=10):
    """Publish marker until the channel receives it (bounded); returns how many publishes it took."""
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        await layer.group_send(TOPIC, {"type": "m", "marker": marker})
        try:
            while True:
                message = await asyncio.wait_for(layer.receive(channel), 0.5)
                if message["marker"] == marker:
                    return attempts
        except TimeoutError:
            assert time.monotonic() < deadline, f"{marker!r} never reached the node"


async def test_a_node_whose_loop_is_held_for_seconds_is_not_dropped(node_and_owner):
    layer, channel, owner = node_and_owner
    time.sleep(4 * TTL)  # the event loop does nothing else meanwhile, as in one huge delivery batch
    await asyncio.sleep(2 * TTL)  # the owner's next liveness checks
    assert "missed its heartbeat" not in owner.output(), owner.output()
    assert await _delivered(layer, channel, "after") == 1, "the first publish after the stall arrives"
    assert layer.stats["dropped_by_owner"] == 0


async def test_a_live_node_the_owner_dropped_announces_itself_again(node_and_owner):
    layer, channel, owner = node_and_owner
    await layer._stop_heartbeat()  # its heartbeats stop reaching Redis, as if the node were dead
    layer.draining = True  # (the async keep-alive would renew them otherwise)
    deadline = time.monotonic() + 10
    while "node ws-t missed its heartbeat" not in owner.output():
        assert time.monotonic() < deadline, "the owner never dropped the silent node"
        await asyncio.sleep(0.05)
    layer.draining = False
    layer._start_heartbeat()
    # The owner told the node it was dropped; the node announced its topic again by itself.
    await _delivered(layer, channel, "after")
    assert layer.stats["dropped_by_owner"] >= 1
