"""History and recovery on the Phoenix wire: refs "<epoch>:<seq>", all-or-nothing replay, no gap and
no repeat at the handover, gaps filled from history on a live node."""

import asyncio
import json

import pytest

from pubsub.core import entries
from pubsub.layer import TopicRingLayer
from pubsub.socket.consumer import PhoenixSocket
from pubsub.transport.memory import MemoryTransport
from topicserver.server import TopicServer

TIMEOUT = 5
TOPIC = "room:history"


class Client:
    def __init__(self, communicator):
        self.ws = communicator

    async def send(self, *frame):
        await self.ws.send_to(text_data=json.dumps(list(frame)))

    async def recv(self):
        return json.loads(await self.ws.receive_from(TIMEOUT))

    async def join(self, params, join_ref="1"):
        await self.send(join_ref, join_ref, TOPIC, "phx_join", params)
        reply = await self.recv()
        assert reply[3] == "phx_reply" and reply[4]["status"] == "ok", reply
        return reply[4]["response"]

    async def events(self, count):
        """The next count broadcasts (skipping replies), as (ref, n)."""
        seen = []
        while len(seen) < count:
            frame = await self.recv()
            if frame[3] == "event":
                seen.append((frame[1], frame[4]["n"], frame[0]))
        return seen

    async def quiet(self):
        assert await self.ws.receive_nothing(0.3), "expected no frame"


@pytest.fixture
def connect(open_communicator):
    async def open_socket(**options):
        options.setdefault("publish_rate", 0)
        return Client(await open_communicator(PhoenixSocket.as_asgi(**options)))

    return open_socket


async def publish(publisher, numbers):
    for n in numbers:
        await publisher.send("1", f"p{n}", TOPIC, "publish", ["event", {"n": n}])


def seq_of(ref):
    epoch, _, seq = ref.partition(":")
    assert epoch and not epoch.isdigit() and seq.isdigit(), ref
    return int(seq)


async def test_a_client_that_missed_20_messages_gets_them_in_order_then_the_live_ones(connect):
    publisher = await connect()
    await publisher.join({})
    reader = await connect()
    start = await reader.join({"recover": True})
    assert start["recovered"] is False and start["epoch"].startswith("e") and isinstance(start["seq"], int)
    await publish(publisher, range(5))
    seen = await reader.events(5)
    assert [n for _, n, _ in seen] == list(range(5))
    assert [seq_of(ref) for ref, _, _ in seen] == list(range(start["seq"] + 1, start["seq"] + 6))
    last_ref = seen[-1][0]
    await reader.ws.disconnect()

    await publish(publisher, range(5, 25))  # missed while away
    await publisher.events(25)  # (all accepted and delivered to the publisher itself)
    back = await connect()
    epoch, last = last_ref.split(":")
    response = await back.join({"recover": {"epoch": epoch, "seq": int(last)}}, join_ref="9")
    assert response == {"epoch": epoch, "seq": int(last) + 20, "recovered": True}
    missed = await back.events(20)
    assert [n for _, n, _ in missed] == list(range(5, 25))
    assert [seq_of(ref) for ref, _, _ in missed] == list(range(int(last) + 1, int(last) + 21))
    assert {join_ref for _, _, join_ref in missed} == {"9"}, "replayed with the new join_ref"
    await publish(publisher, range(25, 28))
    live = await back.events(3)
    assert [n for _, n, _ in live] == [25, 26, 27]
    assert [seq_of(ref) for ref, _, _ in live] == list(range(int(last) + 21, int(last) + 24))
    await back.quiet()


async def test_joins_without_recover_keep_a_null_ref(connect):
    publisher, plain = await connect(), await connect()
    await publisher.join({})
    assert await plain.join({}) == {}
    await publish(publisher, [1])
    assert await plain.recv() == ["1", None, TOPIC, "event", {"n": 1}]


async def test_too_many_missed_or_another_epoch_is_recovered_false_and_nothing_is_replayed(connect):
    publisher = await connect()
    await publisher.join({})
    await publish(publisher, range(12))
    await publisher.events(12)
    latest = (await (await connect()).join({"recover": True}))["seq"]
    epoch = (await (await connect()).join({"recover": True}))["epoch"]
    for position, why in (
        ({"epoch": epoch, "seq": latest - 11}, "11 missed, limit 10"),
        ({"epoch": "e0ther", "seq": latest - 2}, "another epoch"),
        ({"epoch": epoch, "seq": latest + 5}, "a position from the future"),
    ):
        client = await connect(recovery_limit=10)
        response = await client.join({"recover": position})
        assert response == {"epoch": epoch, "seq": latest, "recovered": False}, why
        await client.quiet()
    client = await connect(recovery_limit=10)
    assert (await client.join({"recover": {"epoch": epoch, "seq": latest - 10}}))["recovered"] is True
    assert [n for _, n, _ in await client.events(10)] == list(range(2, 12))


async def test_a_malformed_recover_is_an_error_reply_and_keeps_the_join_it_had(connect):
    publisher = await connect()
    await publisher.join({})
    client = await connect()
    await client.join({}, join_ref="7")
    for bad in ({"epoch": 1, "seq": 2}, {"epoch": "e1"}, {"epoch": "e1", "seq": -1}, "yes", 3):
        await client.send("1", "1", TOPIC, "phx_join", {"recover": bad})
        reply = await client.recv()
        assert reply[4]["status"] == "error" and "recover must be" in reply[4]["response"]["reason"], reply
    await publish(publisher, [1])
    assert await client.recv() == ["7", None, TOPIC, "event", {"n": 1}], "still joined as before"


async def test_a_storm_of_publishes_during_the_rejoin_leaves_no_gap_and_no_repeat(connect):
    publisher = await connect()
    await publisher.join({})
    watcher = await connect()
    start = await watcher.join({"recover": True})
    await publish(publisher, range(10))
    seen = await watcher.events(10)
    epoch, last = seen[-1][0].split(":")
    await watcher.ws.disconnect()

    storm = asyncio.ensure_future(publish(publisher, range(10, 210)))
    await asyncio.sleep(0.005)
    back = await connect()
    response = await back.join({"recover": {"epoch": epoch, "seq": int(last)}})
    assert response["recovered"] is True
    await storm
    got = await back.events(200)
    assert [n for _, n, _ in got] == list(range(10, 210)), "every message once, in order"
    assert [seq_of(ref) for ref, _, _ in got] == list(range(int(last) + 1, int(last) + 201))
    assert start["epoch"] == epoch
    await back.quiet()


# A gap on a live node


class LosingTransport:
    """A real in-memory transport that loses the node stream's entries whose seq is in `lose`."""

    def __init__(self, transport, lose):
        self.transport, self.lose = transport, lose

    def __getattr__(self, name):
        return getattr(self.transport, name)

    async def commit(self, server, generation, numberings, appends, cursor, *history):
        kept = []
        for stream, data, topic in appends:
            fields = entries.unpack(data, entries.NODE_OPS) if stream.startswith("dps:node:") else None
            if fields and fields[0] == "msg" and fields[2] in self.lose:
                continue
            kept.append((stream, data, topic))
        return await self.transport.commit(server, generation, numberings, kept, cursor, *history)


@pytest.mark.parametrize("history_size, filled", [(100, True), (0, False)])
async def test_a_gap_on_a_live_node_is_filled_from_history_or_reported(history_size, filled):
    memory = MemoryTransport()
    server = TopicServer("ts-1", LosingTransport(memory, lose={3, 4}), members=["ts-1"], history_size=history_size)
    ready = asyncio.Event()
    running = asyncio.ensure_future(server.run(ready))
    await ready.wait()
    layer = TopicRingLayer(node="ws-gap", topic_servers=["ts-1"], transport=memory, live_ring=False)
    lost = []
    try:
        channel = await layer.new_channel()
        layer.register_gap_handler(channel, lost.append)
        await layer.group_add(TOPIC, channel)
        for n in range(1, 7):
            await layer.group_send(TOPIC, {"type": "m", "n": n})
        got = [(await asyncio.wait_for(layer.receive(channel), TIMEOUT))["n"] for _ in range(6 if filled else 4)]
        if filled:
            assert got == [1, 2, 3, 4, 5, 6] and layer.stats["gaps_filled"] == 1 and lost == []
        else:
            assert got == [1, 2, 5, 6] and layer.stats["sequence_gaps"] == 1 and lost == [TOPIC]
    finally:
        await layer.close()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_topic_s_first_messages_lost_on_their_way_are_a_gap_for_a_join_at_zero(connect):
    """A recovering join of a topic with no message yet knows its position (0): if the first message
    to reach it is number 3, 1 and 2 were lost on the way, and it errors so its client rejoins."""
    from channels.layers import get_channel_layer

    from pubsub.core.messages import broadcast_message
    from pubsub.transport.base import node_stream

    client = await connect()
    response = await client.join({"recover": True})
    assert response["seq"] == 0 and response["recovered"] is False
    layer = get_channel_layer()
    message = entries.pack_message(broadcast_message(TOPIC, "event", {"n": 3}))
    epoch = response["epoch"]
    await layer.transport.append(node_stream(layer.node), entries.pack("msg", TOPIC, 3, message, epoch, 0))
    frame = await client.recv()
    assert frame[2:4] == [TOPIC, "phx_error"], frame
