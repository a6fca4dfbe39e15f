"""The TopicRingLayer contract: what any Channels app may rely on, on every transport."""

import asyncio

import pytest

from pubsub.core import entries
from pubsub.exceptions import ChannelFull, TransportError
from pubsub.layer import TopicRingLayer
from pubsub.transport.base import inbox_stream, node_stream
from pubsub.transport.factory import redis_transport
from pubsub.transport.memory import MemoryTransport
from pubsub.transport.redis import RedisTransport
from tests.processes import RedisClusterServer, RedisServer
from topicserver.server import TopicServer

RECEIVE_TIMEOUT = 5.0


async def receive(layer, channel, timeout=RECEIVE_TIMEOUT):
    try:
        return await asyncio.wait_for(layer.receive(channel), timeout)
    except TimeoutError:
        raise AssertionError(f"{channel} received nothing within {timeout}s") from None


async def assert_nothing(layer, channel, wait=0.2):
    """Nothing queued for channel, after giving in-flight deliveries `wait` seconds to land."""
    await asyncio.sleep(wait)
    assert layer._mailboxes[channel].messages == type(layer._mailboxes[channel].messages)(), "unexpected message"


class CountingTransport:
    """A real transport, counting the streams it appends to (what Redis XADDs would be)."""

    def __init__(self, transport, appended):
        self.transport = transport
        self.appended = appended

    def __getattr__(self, name):
        return getattr(self.transport, name)

    async def append(self, stream, data):
        self.appended.append(stream)
        await self.transport.append(stream, data)

    async def append_many(self, items):
        self.appended.extend(stream for stream, _ in items)
        await self.transport.append_many(items)

    async def deliver(self, server, generation, appends, cursor):
        self.appended.extend(stream for stream, _ in appends)
        return await self.transport.deliver(server, generation, appends, cursor)

    async def commit(self, server, generation, numberings, appends, cursor, *history):
        self.appended.extend(stream for stream, _, _ in appends)  # (all stored here: nothing is refused)
        return await self.transport.commit(server, generation, numberings, appends, cursor, *history)


@pytest.fixture(scope="module")
def module_redis():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_redis_cluster():
    cluster = RedisClusterServer(masters=3)
    yield cluster
    cluster.stop()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def make_transport(request):
    """Transports of one kind: every process gets its own, as separate processes would."""
    if request.param == "memory":
        shared = MemoryTransport()
        return lambda: shared
    redis = request.getfixturevalue("module_redis" if request.param == "redis" else "module_redis_cluster")
    with redis.client() as client:
        client.flushall()
    return lambda: redis_transport(redis.url)


@pytest.fixture
async def cluster(make_transport):
    """Start topic servers and node layers over the transport; stop everything at teardown."""
    tasks, layers, transports, appends = [], [], [], []

    async def start(nodes=("ws-a",), servers=("ts-1", "ts-2"), capacity=1000):
        topic_servers = []
        for name in servers:
            transport = CountingTransport(make_transport(), appends)
            transports.append(transport.transport)
            server = TopicServer(name, transport, members=list(servers))
            ready = asyncio.Event()
            tasks.append(asyncio.create_task(server.run(ready)))
            await ready.wait()
            topic_servers.append(server)
        counting = CountingTransport(make_transport(), appends)
        transports.append(counting.transport)
        for node in nodes:
            layers.append(TopicRingLayer(node=node, topic_servers=servers, transport=counting, capacity=capacity))
        return layers[-len(nodes) :], counting, topic_servers

    yield start
    for layer in layers:
        await layer.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for transport in {id(t): t for t in transports}.values():
        await transport.close()


@pytest.fixture
async def layer(cluster):
    (layer,), _, _ = await cluster(capacity=10)
    return layer


@pytest.fixture
async def two_nodes(cluster):
    return await cluster(nodes=("ws-a", "ws-b"))


async def test_embedded_layer_runs_its_own_topic_servers():
    layer = TopicRingLayer(node="solo", topic_servers=["ts-1", "ts-2"])
    try:
        channel = await layer.new_channel()
        await layer.group_add("topics:matrix", channel)
        await layer.group_send("topics:matrix", {"type": "m"})
        assert await receive(layer, channel) == {"type": "m"}
        assert sorted(server.name for server in layer.topic_servers) == ["ts-1", "ts-2"]
    finally:
        await layer.close()


async def test_channel_names_carry_the_node(layer):
    channel = await layer.new_channel()
    assert channel.startswith("dps.ws-a!")
    assert layer.node_of(channel) == "ws-a"
    assert layer.node_of("specific.ws-b!abc") == "ws-b"
    assert layer.node_of("worker") is None


async def test_send_and_receive_in_order(layer):
    channel = await layer.new_channel()
    for i in range(5):
        await layer.send(channel, {"type": "test.message", "n": i})
    assert [(await receive(layer, channel))["n"] for _ in range(5)] == list(range(5))


async def test_a_cancelled_receive_loses_nothing(layer):
    """A consumer's receive is cancelled all the time (a timeout, a disconnect): the next one still
    gets every message, including one that arrived while the first was being cancelled."""
    channel = await layer.new_channel()
    for _ in range(20):
        waiting = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0)
        await layer.send(channel, {"type": "test.message", "n": 1})
        waiting.cancel()
        try:
            got = [await waiting]
        except asyncio.CancelledError:
            got = []
        got += [await receive(layer, channel)] if not got else []
        assert [m["n"] for m in got] == [1]
        await assert_nothing(layer, channel, wait=0)


async def test_concurrent_receivers_each_get_their_own_messages(layer):
    channels = [await layer.new_channel() for _ in range(50)]
    receivers = [asyncio.ensure_future(receive(layer, channel)) for channel in channels]
    await asyncio.sleep(0)
    await asyncio.gather(*(layer.send(c, {"type": "test.message", "to": c}) for c in reversed(channels)))
    assert [m["to"] for m in await asyncio.gather(*receivers)] == channels


async def test_full_channel_raises_and_counts(layer):
    channel = await layer.new_channel()
    for i in range(10):
        await layer.send(channel, {"type": "test.message", "n": i})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "test.message", "n": 10})
    assert layer.stats["dropped"] == 1


async def test_group_send_reaches_every_member_once(layer):
    channels = [await layer.new_channel() for _ in range(3)]
    for channel in channels:
        await layer.group_add("topics:matrix", channel)
    await layer.group_send("topics:matrix", {"type": "chat.message", "text": "hi"})
    for channel in channels:
        assert await receive(layer, channel) == {"type": "chat.message", "text": "hi"}
        await assert_nothing(layer, channel)


async def test_group_discard_stops_delivery(layer):
    stays, leaves = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("g", stays)
    await layer.group_add("g", leaves)
    await layer.group_discard("g", leaves)
    await layer.group_send("g", {"type": "m"})
    assert await receive(layer, stays) == {"type": "m"}
    await assert_nothing(layer, leaves)


async def test_group_order_is_publish_order(layer):
    channel = await layer.new_channel()
    await layer.group_add("ordered", channel)
    for i in range(10):
        await layer.group_send("ordered", {"type": "m", "n": i})
    assert [(await receive(layer, channel))["n"] for _ in range(10)] == list(range(10))


async def test_group_send_to_empty_group_is_fine(layer):
    await layer.group_send("nobody-here", {"type": "m"})


async def test_group_delivery_over_capacity_is_counted(layer):
    channel = await layer.new_channel()
    await layer.group_add("busy", channel)
    for i in range(15):
        await layer.group_send("busy", {"type": "m", "n": i})
    settled = lambda: layer.stats["delivered"] + layer.stats["dropped"] == 15  # noqa: E731
    await asyncio.wait_for(_until(settled), RECEIVE_TIMEOUT)
    received = [(await receive(layer, channel))["n"] for _ in range(10)]
    assert received == list(range(10))
    await assert_nothing(layer, channel)
    assert layer.stats["dropped"] == 5


@pytest.mark.parametrize("bad", ["has space", "", "x" * 256, 5])
async def test_invalid_group_names_are_refused(layer, bad):
    channel = await layer.new_channel()
    with pytest.raises(TypeError):
        await layer.group_add(bad, channel)


@pytest.mark.parametrize("bad", [None, "text", {"no": "type"}, {"type": 5}])
async def test_messages_must_be_typed_dicts(layer, bad):
    with pytest.raises(TypeError):
        await layer.group_send("g", bad)


async def test_flush_forgets_everything(layer):
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    await layer.flush()
    assert layer.local_members("g") == 0
    fresh = await layer.new_channel()
    await layer.group_add("g", fresh)
    await layer.group_send("g", {"type": "m"})
    assert await receive(layer, fresh) == {"type": "m"}


async def test_cross_node_group_send_is_one_append_per_node(two_nodes):
    (a, b), transport, _ = two_nodes
    a_members = [await a.new_channel() for _ in range(50)]
    b_members = [await b.new_channel() for _ in range(50)]
    for channel in a_members:
        await a.group_add("room:1", channel)
    for channel in b_members:
        await b.group_add("room:1", channel)
    for layer in (a, b):  # the owner has served both subscriptions (its presence_state came back)
        await layer.presence_state("room:1")
    transport.appended.clear()
    await a.group_send("room:1", {"type": "m", "text": "hello"})
    for layer, members in ((a, a_members), (b, b_members)):
        for channel in members:
            assert await receive(layer, channel) == {"type": "m", "text": "hello"}
    inbox = [s for s in transport.appended if s.startswith("dps:ts:")]
    nodes = sorted(s for s in transport.appended if s.startswith("dps:node:"))
    assert inbox == [f"dps:ts:{{{a.ring.owner('room:1')}}}"]
    assert nodes == ["dps:node:{ws-a}", "dps:node:{ws-b}"]


async def test_owner_stamps_sequence_numbers(two_nodes):
    (a, b), _, servers = two_nodes
    channel = await b.new_channel()
    await b.group_add("seq", channel)
    for _ in range(3):
        await a.group_send("seq", {"type": "m"})
    for _ in range(3):
        await receive(b, channel)
    owner = next(s for s in servers if s.name == a.ring.owner("seq"))
    for _ in range(250):  # the owner records its numbers once the whole commit returns, after nodes have them
        if owner.sequences.get("seq") == 3:
            break
        await asyncio.sleep(0.02)
    assert owner.sequences["seq"] == 3
    assert b.stats["sequence_gaps"] == 0


async def test_a_publish_appended_twice_is_delivered_once(two_nodes):
    """A retried append can store a publish twice (Redis applied it, the reply was lost): the owner
    drops the repeat by the publish's origin."""
    (a, b), transport, servers = two_nodes
    channel = await b.new_channel()
    await b.group_add("once", channel)
    owner = next(s for s in servers if s.name == a.ring.owner("once"))
    entry = entries.pack("pub", "once", entries.pack_message({"type": "m", "n": 1}), "ws-a/test/1")
    await transport.append_many([(inbox_stream(owner.name), entry), (inbox_stream(owner.name), entry)])
    await a.group_send("once", {"type": "m", "n": 2})
    assert [(await receive(b, channel))["n"] for _ in range(2)] == [1, 2]
    await assert_nothing(b, channel)
    assert owner.stats["repeats"] == 1 and owner.sequences["once"] == 2


async def test_send_to_a_channel_of_another_node(two_nodes):
    (a, b), transport, _ = two_nodes
    channel = await b.new_channel()
    await a.send(channel, {"type": "direct", "x": 1})
    assert await receive(b, channel) == {"type": "direct", "x": 1}


async def test_group_add_of_another_nodes_channel(two_nodes):
    """Adding another node's channel is forwarded to that node, and takes effect shortly after."""
    (a, b), _, servers = two_nodes
    channel = await b.new_channel()
    await a.group_add("remote", channel)
    owner = next(s for s in servers if s.name == a.ring.owner("remote"))
    await asyncio.wait_for(_until(lambda: "ws-b" in owner.topics.get("remote", ())), RECEIVE_TIMEOUT)
    await a.group_send("remote", {"type": "m"})
    assert await receive(b, channel) == {"type": "m"}


async def test_last_member_leaving_unsubscribes_the_node(two_nodes):
    (a, b), transport, servers = two_nodes
    channel = await b.new_channel()
    owner = next(s for s in servers if s.name == a.ring.owner("bye"))
    await b.group_add("bye", channel)
    # Held, then let go: its sub (answered with the topic's presence and last number) is served first.
    await asyncio.wait_for(_until(lambda: "bye" in owner.topics), RECEIVE_TIMEOUT)
    await b.group_discard("bye", channel)
    await asyncio.wait_for(_until(lambda: "bye" not in owner.topics), RECEIVE_TIMEOUT)
    transport.appended.clear()
    await a.group_send("bye", {"type": "m"})
    await asyncio.sleep(0.1)
    assert not [s for s in transport.appended if s.startswith("dps:node:")]


async def _until(predicate, interval=0.01):
    while not predicate():
        await asyncio.sleep(interval)


async def test_malformed_entries_are_counted_and_skipped(two_nodes):
    (a, b), transport, servers = two_nodes
    channel = await b.new_channel()
    await b.group_add("sturdy", channel)
    owner = next(s for s in servers if s.name == a.ring.owner("sturdy"))
    for garbage in (b"not msgpack \xc1", entries.pack("nonsense", 1), entries.pack("msg", "sturdy", "seq?", b"")):
        await transport.append(node_stream("ws-b"), garbage)
        await transport.append(inbox_stream(owner.name), garbage)
    await a.group_send("sturdy", {"type": "m"})
    assert await receive(b, channel) == {"type": "m"}
    assert b.stats["malformed"] == 3
    await asyncio.wait_for(_until(lambda: owner.stats["malformed"] == 3), RECEIVE_TIMEOUT)


async def test_readers_resume_after_redis_restarts():
    redis = RedisServer()
    transports = [RedisTransport(redis.url), RedisTransport(redis.url)]
    server = TopicServer("ts-1", transports[0], members=["ts-1"])
    ready = asyncio.Event()
    task = asyncio.create_task(server.run(ready))
    layer = TopicRingLayer(node="ws-a", topic_servers=["ts-1"], transport=transports[1])
    try:
        await ready.wait()
        channel = await layer.new_channel()
        await layer.group_add("survivor", channel)
        await layer.group_send("survivor", {"type": "m", "n": 1})
        assert (await receive(layer, channel))["n"] == 1
        redis.stop()
        await asyncio.sleep(0.5)  # both readers fail and retry meanwhile
        redis = RedisServer(port=redis.port)  # empty: Redis here keeps nothing on disk
        # The owner still holds the membership; stream ids are times, so "after the last id" still works.
        deadline = asyncio.get_running_loop().time() + RECEIVE_TIMEOUT
        while True:
            try:
                await layer.group_send("survivor", {"type": "m", "n": 2})
                break
            except TransportError:
                assert asyncio.get_running_loop().time() < deadline, "publishing never recovered"
                await asyncio.sleep(0.1)
        assert (await receive(layer, channel))["n"] == 2
    finally:
        await layer.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for transport in transports:
            await transport.close()
        redis.stop()
