"""Publishing from server code (pubsub.publish / apublish), and the layer used from any event loop.

Channels documents ``async_to_sync(layer.group_send)(...)`` for publishing from sync
code; that runs on a fresh event loop, or on the node's loop from another thread.
Neither may hang, reset the node, or lose the message.
"""

import asyncio
import json
import subprocess
import sys
import time

import pytest
import websockets

import pubsub
import pubsub.http.publishing
from pubsub.core.messages import BROADCAST_TYPE
from pubsub.layer import TopicRingLayer
from tests.conftest import Cluster
from tests.processes import ROOT, dps_env

TOPIC = "news:1"


async def _next_broadcast(layer, channel, timeout=10):
    return await asyncio.wait_for(layer.receive(channel), timeout)


def test_publish_checks_its_arguments():
    with pytest.raises(ValueError, match="topic"):
        pubsub.publish("has space", "e", {})
    with pytest.raises(ValueError, match="event"):
        pubsub.publish(TOPIC, "phx_reply", {})
    with pytest.raises(TypeError, match="payload"):
        pubsub.publish(TOPIC, "e", ["not", "a", "dict"])


async def test_a_prefix_without_a_dot_still_names_the_node():
    layer = TopicRingLayer(node="ws-q")
    try:
        channel = await layer.new_channel("test-gr-chan-1")
        assert channel.startswith("test-gr-chan-1.ws-q!") and layer.node_of(channel) == "ws-q"
        await layer.group_add("g", channel)
        await layer.group_send("g", {"type": "m"})
        assert await _next_broadcast(layer, channel) == {"type": "m"}
    finally:
        await layer.close()


async def test_sync_publish_from_another_thread_goes_through_the_running_node():
    """Embedded: the node runs on this loop; sync code in a thread (a view, a signal handler)
    publishes; the subscriber gets it and the node keeps its channels and groups."""
    layer = TopicRingLayer(node="ws-s")
    try:
        channel = await layer.new_channel()
        await layer.group_add(TOPIC, channel)
        for n in range(3):
            await asyncio.to_thread(
                pubsub.http.publishing.async_to_sync(layer.group_send), TOPIC, {"type": "m", "n": n}
            )
        assert [(await _next_broadcast(layer, channel))["n"] for _ in range(3)] == [0, 1, 2]
        assert layer.local_members(TOPIC) == 1
    finally:
        await layer.close()


async def test_apublish_reaches_subscribers(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "pubsub.layer.TopicRingLayer", "CONFIG": {"node": "ws-p"}}}
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    try:
        channel = await layer.new_channel()
        await layer.group_add(TOPIC, channel)
        await pubsub.apublish(TOPIC, "headline", {"title": "hi"})
        message = await _next_broadcast(layer, channel)
        assert message["type"] == BROADCAST_TYPE
        assert message["tail"] == ',null,"news:1","headline",{"title":"hi"}]'
    finally:
        await layer.close()


PUBLISHER = """
import asyncio, sys, django
django.setup()
import pubsub
import pubsub.http.publishing
from channels.layers import get_channel_layer
from asgiref.sync import async_to_sync
pubsub.publish("news:1", "headline", {"n": int(sys.argv[1])})  # a management command or a script
async_to_sync(get_channel_layer().group_send)(  # what Channels' docs show for a sync view
    "news:1", {"type": "phx.broadcast", "topic": "news:1", "tail": ',null,"news:1","headline",{"n":-1}]'}
)
asyncio.run(pubsub.apublish("news:1", "headline", {"n": int(sys.argv[1]) + 100}))  # a fresh loop
"""


@pytest.mark.processes
async def test_short_lived_processes_publish_to_a_cluster_and_exit():
    """A process that is no websocket node publishes three ways and exits promptly (a fresh
    asyncio.run used to hang on the node tasks it started), and subscribers on both nodes get it all."""
    cluster = Cluster()
    try:
        sockets = []
        for node in cluster.nodes.values():
            ws = await websockets.connect(node.url())
            await ws.send(json.dumps(["1", "1", TOPIC, "phx_join", {}]))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))[4]["status"] == "ok"
            sockets.append(ws)
        env = dps_env(DPS_REDIS_URL=cluster.redis.url, DPS_TOPIC_SERVERS="ts-1,ts-2", DPS_NODE="script")
        for n in range(3):
            started = time.monotonic()
            result = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", PUBLISHER, str(n)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            assert "Traceback" not in result.stderr, result.stderr
            print(f"\npublisher process {n}: {time.monotonic() - started:.1f}s")
        for ws in sockets:
            got = []
            async with asyncio.timeout(20):
                while len(got) < 9:
                    frame = json.loads(await ws.recv())
                    if frame[3] == "headline":
                        got.append(frame[4]["n"])
            assert got == [0, -1, 100, 1, -1, 101, 2, -1, 102], got
            await ws.close()
    finally:
        cluster.stop()


@pytest.mark.processes
async def test_a_publish_only_process_keeps_one_connection(redis_server):
    """A worker that only publishes, from one long-lived loop, must not connect per message."""
    layer = TopicRingLayer(node="worker", topic_servers=["ts-1"], redis_url=redis_server.url)
    client = redis_server.client()
    before = client.info("stats")["total_connections_received"]
    try:
        for n in range(200):
            await layer.group_send(TOPIC, {"type": "m", "n": n})
    finally:
        await layer.close()
    connections = client.info("stats")["total_connections_received"] - before
    client.close()
    assert connections <= 3, f"{connections} connections for 200 publishes"
    assert layer._tasks == [], "publishing started no node tasks"


def _receive_within(layer, channel, timeout=10):
    """One message for channel, received on a fresh event loop (as sync code does)."""

    async def receive():
        return await asyncio.wait_for(layer.receive(channel), timeout)

    return asyncio.run(receive())


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_node_keeps_its_channels_groups_and_queued_messages_from_one_event_loop_to_the_next(
    backend, redis_server, request
):
    """Sync code runs each layer call on an event loop of its own (async_to_sync, asyncio.run):
    when the loop that ran the node ends, the node resumes on the next one with what it held."""
    from asgiref.sync import async_to_sync

    from tests.processes import TopicServerProcess

    redis_url = None
    if backend == "redis":
        owner = TopicServerProcess("ts-1", redis_server)
        request.addfinalizer(owner.stop)
        redis_url = redis_server.url
    layer = TopicRingLayer(node="ws-loops", topic_servers=["ts-1"], redis_url=redis_url)
    channel = async_to_sync(layer.new_channel)("sync.")
    async_to_sync(layer.group_add)("room", channel)  # the node starts on this call's loop, which then ends
    async_to_sync(layer.group_send)("room", {"type": "m", "n": 1})
    asyncio.run(layer.send(channel, {"type": "m", "n": 2}))
    received = [_receive_within(layer, channel), _receive_within(layer, channel)]
    assert sorted(m["n"] for m in received) == [1, 2]  # the group's owner hop may put n=1 second
    # Queued while no loop ran the node: delivered on the next one, in order.
    for n in range(3, 8):
        async_to_sync(layer.group_send)("room", {"type": "m", "n": n})
    assert [_receive_within(layer, channel)["n"] for _ in range(5)] == [3, 4, 5, 6, 7]
    async_to_sync(layer.group_discard)("room", channel)
    async_to_sync(layer.group_send)("room", {"type": "m", "n": 8})
    async_to_sync(layer.send)(channel, {"type": "m", "n": 9})
    assert _receive_within(layer, channel)["n"] == 9, "left the group: only the direct send arrives"
    asyncio.run(layer.close())
