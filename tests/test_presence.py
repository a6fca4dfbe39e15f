"""Presence: tracked by identity, held by the topic's owner, on the wire as phoenix.js expects."""

import asyncio
import json

import pytest

from pubsub.socket.auth import SocketAuth
from pubsub.socket.channel_routes import ChannelRoutes
from pubsub.socket.consumer import PhoenixSocket
from tests.presence_view import PresenceView

TIMEOUT = 5
ROUTES = [("mood:*", "tests.channel_examples.MoodChannel"), ("*", "pubsub.channels.PublishChannel")]


class Client:
    """A raw client that keeps its presence view of each topic from the frames it reads."""

    def __init__(self, communicator):
        self.ws = communicator
        self.views: dict[str, PresenceView] = {}
        self.frames: list[list] = []

    async def send(self, *frame):
        await self.ws.send_to(text_data=json.dumps(list(frame)))

    async def recv(self):
        frame = json.loads(await self.ws.receive_from(TIMEOUT))
        if frame[3] in ("presence_state", "presence_diff"):
            self.views.setdefault(frame[2], PresenceView()).apply(frame[3], frame[4])
        self.frames.append(frame)
        return frame

    async def join(self, topic, params=None, join_ref="1"):
        await self.send(join_ref, join_ref, topic, "phx_join", params or {})
        reply = await self.recv()
        assert reply[3] == "phx_reply" and reply[4]["status"] == "ok", reply
        return reply

    async def until(self, topic, predicate, what):
        """Read frames until this client's view of topic satisfies predicate (bounded)."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while not predicate(self.views.get(topic, PresenceView())):
                    await self.recv()
        except TimeoutError:
            view = self.views.get(topic)
            raise AssertionError(f"{what}: view is {view.state if view else None}") from None
        return self.views[topic]

    async def quiet(self, seconds=0.3):
        assert await self.ws.receive_nothing(seconds), "expected no frame"


@pytest.fixture
def connect(open_communicator):
    async def open_socket(user=None):
        app = PhoenixSocket.as_asgi(
            channel_routes=ChannelRoutes(ROUTES), socket_auth=SocketAuth("tests.channel_examples.plan_hook")
        )
        query = f"vsn=2.0.0&user={user}" if user else "vsn=2.0.0"
        return Client(await open_communicator(app, f"/socket/websocket?{query}"))

    return open_socket


def has_keys(*keys):
    return lambda view: view.synced and view.keys() == set(keys)


async def test_identified_joins_are_tracked_and_every_client_sees_the_same_list(connect):
    ann, bo = await connect("ann"), await connect("bo")
    await ann.join("room:1")
    state = await ann.recv()
    assert state[:4] == ["1", None, "room:1", "presence_state"]
    await ann.until("room:1", has_keys("ann"), "ann sees herself")
    await bo.join("room:1", join_ref="7")
    await bo.until("room:1", has_keys("ann", "bo"), "bo sees both")
    await ann.until("room:1", has_keys("ann", "bo"), "ann sees bo arrive")
    meta = ann.views["room:1"].state["bo"][0]
    assert set(meta) == {"phx_ref", "online_at"} and isinstance(meta["online_at"], int)
    diff = next(f for f in bo.frames if f[3] == "presence_diff")
    assert diff[0] == "7" and diff[1] is None  # a broadcast: the receiver's join_ref, a null ref


async def test_two_tabs_are_one_key_with_two_metas_and_leaving_removes_one(connect):
    watcher, tab1, tab2 = await connect("watcher"), await connect("ann"), await connect("ann")
    await watcher.join("room:2")
    await tab1.join("room:2")
    await tab2.join("room:2")
    view = await watcher.until("room:2", lambda v: len(v.refs().get("ann", ())) == 2, "two metas for ann")
    await tab1.send("1", "2", "room:2", "phx_leave", {})
    await watcher.until("room:2", lambda v: len(v.refs().get("ann", ())) == 1, "one tab left")
    await tab2.ws.disconnect()
    view = await watcher.until("room:2", has_keys("watcher"), "ann gone when her last tab closed")
    assert view.keys() == {"watcher"}


async def test_anonymous_sockets_are_not_tracked_and_get_a_state_only_when_they_ask(connect):
    seed, viewer, ann = await connect(), await connect(), await connect("ann")
    await ann.join("room:3")
    await ann.until("room:3", has_keys("ann"), "ann present")
    await seed.join("room:3")
    await seed.quiet()  # the seed's example: a join reply, and nothing else
    await viewer.join("room:3", {"presence": True})
    await viewer.until("room:3", has_keys("ann"), "the viewer sees ann, not itself")
    await ann.quiet(0.3)
    assert ann.views["room:3"].keys() == {"ann"}
    bo = await connect("bo")
    await bo.join("room:3")
    await viewer.until("room:3", has_keys("ann", "bo"), "the viewer sees bo arrive")
    await seed.quiet()  # a socket that did not ask gets no presence_diff either


async def test_a_duplicate_join_replaces_the_meta(connect):
    watcher, ann = await connect("watcher"), await connect("ann")
    await watcher.join("room:4")
    await ann.join("room:4")
    first = await watcher.until("room:4", has_keys("watcher", "ann"), "ann joined")
    old_ref = next(iter(first.refs()["ann"]))
    await ann.send("2", "2", "room:4", "phx_join", {})  # phoenix.js rejoining the same topic
    view = await watcher.until(
        "room:4", lambda v: v.refs().get("ann") and old_ref not in v.refs()["ann"], "the old meta replaced"
    )
    assert len(view.refs()["ann"]) == 1


async def test_update_is_one_diff_with_the_new_meta_joining_and_the_old_leaving(connect):
    watcher, ann = await connect("watcher"), await connect("ann")
    await watcher.join("mood:1")
    await ann.join("mood:1")
    view = await watcher.until("mood:1", has_keys("watcher", "ann"), "ann joined")
    assert view.state["ann"][0]["mood"] == "fine"
    old_ref = view.state["ann"][0]["phx_ref"]
    await ann.send("1", "2", "mood:1", "mood", {"mood": "busy"})
    await watcher.until("mood:1", lambda v: v.state.get("ann", [{}])[0].get("mood") == "busy", "the update")
    diff = [f for f in watcher.frames if f[3] == "presence_diff"][-1][4]
    (new,) = diff["joins"]["ann"]["metas"]
    (old,) = diff["leaves"]["ann"]["metas"]
    assert (new["mood"], new["phx_ref_prev"], old["phx_ref"], old["mood"]) == ("busy", old_ref, old_ref, "fine")
    assert new["phx_ref"] != old_ref and new["online_at"] == old["online_at"]


async def test_many_joins_at_once_are_coalesced_into_few_diffs(connect):
    watcher = await connect("watcher")
    await watcher.join("room:big")
    await watcher.until("room:big", has_keys("watcher"), "the watcher present")
    clients = [await connect(f"user{i}") for i in range(60)]
    await asyncio.gather(*(c.join("room:big") for c in clients))
    everyone = {"watcher", *(f"user{i}" for i in range(60))}
    view = await watcher.until("room:big", lambda v: v.keys() == everyone, "all 60 arrived")
    assert view.diffs < 20, f"{view.diffs} diffs for 61 joins"


# The owner's table: a node taken for dead that comes back


def test_a_node_dropped_and_back_within_the_window_causes_no_diff():
    from topicserver.presence import PresenceTable

    table = PresenceTable(window=0)
    table.track("t", "ws-a", "ann", {"phx_ref": "r1"})
    table.due()
    table.drop("t", "ws-a")  # its heartbeat expired
    table.track("t", "ws-a", "ann", {"phx_ref": "r1"}, quiet=True)  # it read "dropped" and re-announced
    ((_, diff),) = table.due()
    message = diff.as_message()
    assert (message["joins"], message["leaves"]) == ({}, {}) and message["quiet"] == {
        "ann": {"metas": [{"phx_ref": "r1"}]}
    }


def test_a_node_whose_users_were_announced_gone_announces_them_back_as_joins():
    from topicserver.presence import PresenceTable

    table = PresenceTable(window=0)
    table.track("t", "ws-a", "ann", {"phx_ref": "r1"})
    table.due()
    table.drop("t", "ws-a")
    ((_, left),) = table.due()
    assert left.as_message()["leaves"] == {"ann": {"metas": [{"phx_ref": "r1"}]}}
    table.track("t", "ws-a", "ann", {"phx_ref": "r1"}, quiet=True)
    ((_, back),) = table.due()
    assert back.as_message()["joins"] == {"ann": {"metas": [{"phx_ref": "r1"}]}}, "clients saw it leave"
    table.track("t", "ws-b", "bo", {"phx_ref": "r2"}, quiet=True)  # a new owner learning: quiet
    ((_, learned),) = table.due()
    assert learned.as_message()["joins"] == {} and "bo" in learned.as_message()["quiet"]
