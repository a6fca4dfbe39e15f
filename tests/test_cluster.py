"""The distributed backbone with real processes: redis-server, 2 runtopicserver, 2 daphne nodes."""

import asyncio
import json
import signal
import time
from collections import Counter

import pytest
import websockets

from pubsub.core.ring import HashRing
from tests import phoenix_js
from tests.test_daphne import seed_session

pytestmark = pytest.mark.processes

TIMEOUT = 10
RING = HashRing(["ts-1", "ts-2"])
# Topics owned by each of the two servers, so every test covers both owners.
TOPICS = {owner: [t for t in (f"room:{i}" for i in range(50)) if RING.owner(t) == owner][:2] for owner in RING.members}


async def join(ws, topic, ref="1"):
    await ws.send(json.dumps([ref, ref, topic, "phx_join", {}]))
    reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert reply == [ref, ref, topic, "phx_reply", {"status": "ok", "response": {}}], reply


async def broadcasts(ws, count, event="n", timeout=TIMEOUT):
    """The payloads of the next `count` broadcasts of event (other frames skipped), as (topic, payload)."""
    got = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < count:
                frame = json.loads(await ws.recv())
                if frame[3] == event:
                    got.append((frame[2], frame[4]))
    except TimeoutError:
        raise AssertionError(f"got {len(got)} of {count} broadcasts within {timeout}s: {got[-5:]}") from None
    return got


async def quiet(ws, wait=0.3):
    """No further broadcast arrives (duplicates would). Replies may still come: a publisher's own
    broadcast can reach it before the reply to its publish."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            return
        if json.loads(frame)[3] != "phx_reply":
            raise AssertionError(f"unexpected frame {frame}")


async def test_seed_example_across_two_nodes(cluster):
    await seed_session(cluster.nodes["ws-a"].url(), cluster.nodes["ws-b"].url())


async def test_cross_node_delivery_exactly_once_in_one_order(cluster):
    topics = [t for owned in TOPICS.values() for t in owned]
    per_publisher = 25
    sockets = {}
    try:
        for node in ("ws-a", "ws-b"):
            for i in range(3):
                ws = await websockets.connect(cluster.nodes[node].url())
                for topic in topics:
                    await join(ws, topic)
                sockets[f"{node}-{i}"] = ws
        publishers = [sockets["ws-a-0"], sockets["ws-b-0"]]

        async def publish(index, ws):
            for n in range(per_publisher):
                for topic in topics:
                    await ws.send(json.dumps(["1", f"{n}", topic, "publish", ["n", {"from": index, "n": n}]]))

        await asyncio.gather(*(publish(i, ws) for i, ws in enumerate(publishers)))
        expected = len(publishers) * per_publisher * len(topics)
        received = {name: await broadcasts(ws, expected) for name, ws in sockets.items()}
        for ws in sockets.values():
            await quiet(ws)
    finally:
        for ws in sockets.values():
            await ws.close()
    for topic in topics:
        orders = {name: [(p["from"], p["n"]) for t, p in got if t == topic] for name, got in received.items()}
        reference = next(iter(orders.values()))
        assert sorted(reference) == sorted((i, n) for i in range(2) for n in range(per_publisher)), "exactly once"
        for i in range(2):
            assert [n for sender, n in reference if sender == i] == list(range(per_publisher)), "publish order"
        assert all(order == reference for order in orders.values()), f"{topic}: subscribers disagree on the order"


async def test_phoenix_client_across_two_nodes(cluster):
    modules = phoenix_js.install()
    mount_a = f"ws://127.0.0.1:{cluster.nodes['ws-a'].port}/socket"
    mount_b = f"ws://127.0.0.1:{cluster.nodes['ws-b'].port}/socket"
    subscriber = await phoenix_js.PhoenixSession.start(modules, mount_a, "room:js-cluster", "subscriber", 5)
    publisher = None
    try:
        await subscriber.wait_for("joined")
        publisher = await phoenix_js.PhoenixSession.start(modules, mount_b, "room:js-cluster", "publisher", 5)
        for session in (publisher, subscriber):
            events = await session.finish()
            assert [e["n"] for e in events if e["event"] == "received"] == list(range(5))
            assert {"event": "left"} in events
    finally:
        for session in (subscriber, publisher):
            if session is not None:
                session.kill()


def stream_positions(client):
    """The newest entry id of every DPS stream (topic server inboxes, node streams)."""
    streams = sorted(client.scan_iter(match="dps:*", _type="STREAM"))
    return {stream: (client.xrevrange(stream, count=1) or [(b"0-0", {})])[0][0] for stream in streams}


def appended_since(client, positions):
    """What was XADDed to each stream after positions: {stream kind: (entries, bytes of fields and values)}.

    Only the appends are counted (never heartbeats, snapshots or ring polls, which come and go with
    timing), so the measure is the same on every run.
    """
    appended = Counter()
    for stream in client.scan_iter(match="dps:*", _type="STREAM"):
        kind = "inbox" if stream.startswith(b"dps:ts:") else "history" if stream.startswith(b"dps:hist:") else "node"
        after = positions.get(stream, b"0-0")
        for _, fields in client.xrange(stream, min=b"(" + after, max="+"):
            appended[f"{kind}_entries"] += 1
            appended[f"{kind}_bytes"] += sum(len(key) + len(value) for key, value in fields.items())
    return appended


async def measure_publishes(cluster, subscribers_per_node, publishes=20):
    """Per publish, with subscribers spread over both nodes: XADD calls, and the entries and bytes appended."""
    topic = "room:fanout"
    sockets = []
    try:
        for node in ("ws-a", "ws-b"):
            url = cluster.nodes[node].url()
            batch = await asyncio.gather(
                *(websockets.connect(url, max_queue=None) for _ in range(subscribers_per_node))
            )
            await asyncio.gather(*(join(ws, topic, str(i)) for i, ws in enumerate(batch)))
            sockets.extend(batch)
        publisher = sockets[0]
        with cluster.redis.client() as client:
            xadds_before = client.info("commandstats").get("cmdstat_xadd", {}).get("calls", 0)
            positions = stream_positions(client)
            for n in range(publishes):
                await publisher.send(json.dumps(["0", f"p{n}", topic, "publish", ["n", {"n": n, "text": "x" * 100}]]))
            results = await asyncio.gather(*(broadcasts(ws, publishes, timeout=60) for ws in sockets))
            measured = appended_since(client, positions)
            measured["xadd_calls"] = client.info("commandstats")["cmdstat_xadd"]["calls"] - xadds_before
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    assert all([p["n"] for _, p in got] == list(range(publishes)) for got in results)
    return {key: value / publishes for key, value in measured.items()}


@pytest.mark.parametrize("cluster", ["redis"], indirect=True)  # (counted with one Redis's INFO and keys)
async def test_redis_work_per_publish_is_per_node_not_per_subscriber(cluster):
    small = await measure_publishes(cluster, 50)  # 100 subscribers
    large = await measure_publishes(cluster, 500)  # 1,000 subscribers
    print(f"\nper publish, 100 subscribers: {small}\nper publish, 1000 subscribers: {large}")
    for measured in (small, large):
        # One append to the owner's inbox, then one per node with subscribers (2 nodes), and one
        # into the topic's history (kept once per message, not per node or subscriber).
        assert measured["inbox_entries"] == 1 and measured["node_entries"] == 2, measured
        assert measured["history_entries"] == 1, measured
        assert measured["xadd_calls"] <= 4, "no XADD but those"
    # Ten times the subscribers, the same bytes: stock channels_redis moves ~385 B per member per publish.
    for key in ("inbox_bytes", "node_bytes", "history_bytes"):
        assert large[key] <= 1.05 * small[key], (key, small, large)
    assert large["inbox_bytes"] + large["node_bytes"] + large["history_bytes"] < 2400, large


async def test_generic_channels_consumer_on_the_layer(cluster_factory):
    cluster = cluster_factory(nodes=())
    chat_a = cluster.start_node("ws-a", "tests.chat_app:application")
    chat_b = cluster.start_node("ws-b", "tests.chat_app:application")
    url_a = f"ws://127.0.0.1:{chat_a.port}/chat/lobby"
    url_b = f"ws://127.0.0.1:{chat_b.port}/chat/lobby"
    async with websockets.connect(url_a) as alice, websockets.connect(url_b) as bob:
        await bob.send(json.dumps({"whoami": True}))
        bob_channel = json.loads(await asyncio.wait_for(bob.recv(), TIMEOUT))["me"]
        assert bob_channel.startswith("dps.ws-b!")
        await alice.send(json.dumps({"text": "hello everyone"}))
        for ws in (alice, bob):
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {"text": "hello everyone"}
        await alice.send(json.dumps({"to": bob_channel, "text": "psst, bob"}))
        assert json.loads(await asyncio.wait_for(bob.recv(), TIMEOUT)) == {"text": "psst, bob"}
        await quiet(alice)


async def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.05)


async def test_killed_node_leaves_no_subscriptions(cluster_factory):
    ttl = 2.0
    cluster = cluster_factory(DPS_LIVENESS_TTL=str(ttl))
    client = cluster.redis.client()
    topic = TOPICS["ts-1"][0]
    async with websockets.connect(cluster.nodes["ws-a"].url()) as publisher:
        await join(publisher, topic)
        doomed = await websockets.connect(cluster.nodes["ws-b"].url())
        await join(doomed, topic)
        cluster.nodes["ws-b"].stop(signal.SIGKILL)
        killed_at = time.monotonic()
        dead_stream = "dps:node:{ws-b}"

        async def owner_still_sends():
            before = client.xlen(dead_stream)
            await publisher.send(json.dumps(["1", "p", topic, "publish", ["n", {}]]))
            await broadcasts(publisher, 1)
            return client.xlen(dead_stream) > before

        while await owner_still_sends():
            assert time.monotonic() - killed_at < 2 * ttl, "the owner still sends to the dead node after 2 x TTL"
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - killed_at
        print(f"\nowner dropped the killed node after {elapsed:.2f}s (TTL {ttl}s)")
    client.close()


async def test_restarted_topic_server_serves_its_subscribers_again(cluster_factory):
    cluster = cluster_factory()
    topic = TOPICS["ts-2"][0]
    async with (
        websockets.connect(cluster.nodes["ws-a"].url()) as a,
        websockets.connect(cluster.nodes["ws-b"].url()) as b,
    ):
        await join(a, topic)
        await join(b, topic)
        cluster.topic_servers["ts-2"].stop(signal.SIGKILL)
        cluster.start_topic_server("ts-2")
        # The restarted owner asks the nodes to re-announce; publish until both receive again.
        deadline = time.monotonic() + TIMEOUT
        n = 0
        while True:
            n += 1
            await a.send(json.dumps(["1", f"r{n}", topic, "publish", ["n", {"n": n}]]))
            try:
                await broadcasts(b, 1, timeout=0.5)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "subscribers never received again after the restart"
        for ws in (a, b):  # drain what the recovery loop left behind
            while True:
                try:
                    await asyncio.wait_for(ws.recv(), 0.3)
                except TimeoutError:
                    break
        for m in range(5):
            await a.send(json.dumps(["1", f"s{m}", topic, "publish", ["n", {"m": m}]]))
        for ws in (a, b):
            assert [p["m"] for _, p in await broadcasts(ws, 5)] == list(range(5))
            await quiet(ws)


async def test_sigterm_drains_a_node(cluster_factory):
    cluster = cluster_factory()
    topic = TOPICS["ts-1"][0]
    client = cluster.redis.client()
    sockets = [await websockets.connect(cluster.nodes["ws-b"].url()) for _ in range(20)]
    try:
        for ws in sockets:
            await join(ws, topic)
        async with websockets.connect(cluster.nodes["ws-a"].url()) as publisher:
            await join(publisher, topic)
            stopping = asyncio.ensure_future(asyncio.to_thread(cluster.nodes["ws-b"].stop, signal.SIGTERM, 30))
            for ws in sockets:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(ws.recv(), TIMEOUT)
                assert closed.value.rcvd.code == 4001, "a close code after which clients reconnect"
            assert await stopping == 0, cluster.nodes["ws-b"].output()
            assert client.zscore("dps:nodes", "ws-b") is None, "the drained node left the registry"
            before = client.xlen("dps:node:{ws-b}")
            await publisher.send(json.dumps(["1", "p", topic, "publish", ["n", {}]]))
            await broadcasts(publisher, 1)
            assert client.xlen("dps:node:{ws-b}") == before, "the owner no longer sends to the drained node"
    finally:
        for ws in sockets:
            await ws.close()
        client.close()
    assert "node ws-b: drained" in cluster.nodes["ws-b"].output()
