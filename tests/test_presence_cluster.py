"""Presence across real nodes and topic servers: convergence, phoenix.js, big rooms, and faults
(a killed node's users leave; an owner's kill -9 and a Redis restart make nobody leave)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websockets

from tests import phoenix_js
from tests.conftest import REDIS_KINDS, Cluster
from tests.presence_view import PresenceSocket
from tests.processes import ROOT, RedisServer, dps_env
from tests.test_failover import wait_for_ring

pytestmark = pytest.mark.processes

TTL = 2.0
TOPIC = "room:presence"
API_KEY = "presence-test-key"


@pytest.fixture
def cluster(request):
    """Over one Redis, or the Redis kind a test asks for (parametrize "cluster" indirectly)."""
    started = Cluster(
        topic_servers=("ts-1", "ts-2"),
        redis=getattr(request, "param", "redis"),
        DPS_LIVENESS_TTL=str(TTL),
        DPS_SOCKET_AUTH="tests.channel_examples.plan_hook",
        DPS_API_KEY=API_KEY,
        DPS_CHANNELS="mood:*=tests.channel_examples.MoodChannel,*=pubsub.channels.PublishChannel",
    )
    wait_for_ring(started, ["ts-1", "ts-2"], timeout=6 * TTL)
    yield started
    started.stop()


class People:
    """Identified raw clients on the cluster's nodes; all closed at the end."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.sockets: list[PresenceSocket] = []

    async def join(self, user: str, node: str, topic: str = TOPIC) -> PresenceSocket:
        url = self.cluster.nodes[node].url(f"vsn=2.0.0&user={user}")
        person = PresenceSocket(await websockets.connect(url, max_queue=None), f"{user}@{node}")
        self.sockets.append(person)
        await person.join(topic)
        return person

    async def close(self):
        await asyncio.gather(*(person.ws.close() for person in self.sockets), return_exceptions=True)


@pytest.fixture
async def people(cluster):
    crowd = People(cluster)
    yield crowd
    await crowd.close()


def keys_are(*keys):
    return lambda view: view.synced and view.keys() == set(keys)


async def start_phoenix_presence(cluster, node, topic, user):
    """The phoenix client's Presence on topic; returns (process, js_sees(expected, part="list"))."""
    modules = phoenix_js.install()
    js = await asyncio.create_subprocess_exec(
        "node",
        str(Path(__file__).parent / "js" / "phoenix_presence.js"),
        f"ws://127.0.0.1:{cluster.nodes[node].port}/socket",
        topic,
        user,
        env={**os.environ, "NODE_PATH": str(modules)},
        stdout=asyncio.subprocess.PIPE,
    )

    async def js_sees(expected, part="list"):
        seen = None
        try:
            async with asyncio.timeout(10):
                while seen != expected:
                    line = await js.stdout.readline()
                    assert line, "the phoenix client exited"
                    seen = json.loads(line).get(part)
        except TimeoutError:
            raise AssertionError(f"phoenix.js shows {part} {seen}, not {expected}") from None

    return js, js_sees


async def test_presence_converges_across_nodes_and_the_phoenix_client_agrees(cluster, people):
    js, js_sees = await start_phoenix_presence(cluster, "ws-b", TOPIC, "carol")

    try:
        await js_sees({"carol": 1})
        alice = await people.join("alice", "ws-a")
        bob_tab1 = await people.join("bob", "ws-b")
        bob_tab2 = await people.join("bob", "ws-a")
        await js_sees({"carol": 1, "alice": 1, "bob": 2})
        for person in (alice, bob_tab1, bob_tab2):
            view = await person.until(TOPIC, keys_are("alice", "bob", "carol"), "everyone")
            await person.until(TOPIC, lambda v: len(v.refs().get("bob", ())) == 2, "bob's two tabs")
        await bob_tab1.ws.close()
        await js_sees({"carol": 1, "alice": 1, "bob": 1})
        await alice.send("1", "2", TOPIC, "phx_leave", {})
        await js_sees({"carol": 1, "bob": 1})
        view = await bob_tab2.until(TOPIC, keys_are("bob", "carol"), "alice left")
        assert len(view.refs()["bob"]) == 1
    finally:
        js.kill()
        await js.wait()


async def test_the_phoenix_client_sees_an_update_on_another_node(cluster, people):
    js, js_sees = await start_phoenix_presence(cluster, "ws-b", "mood:1", "carol")
    try:
        alice = await people.join("alice", "ws-a", "mood:1")
        await js_sees({"carol": ["fine"], "alice": ["fine"]}, "moods")
        await alice.send("1", "2", "mood:1", "mood", {"mood": "busy"})
        await js_sees({"carol": ["fine"], "alice": ["busy"]}, "moods")
    finally:
        js.kill()
        await js.wait()


@pytest.mark.parametrize("cluster", REDIS_KINDS, indirect=True)
async def test_two_hundred_identified_clients_join_one_room_at_once(cluster, people):
    users = [f"u{i}" for i in range(200)]
    joined = await asyncio.gather(*(people.join(user, ("ws-a", "ws-b")[i % 2]) for i, user in enumerate(users)))
    everyone = set(users)
    views = await asyncio.gather(
        *(person.until(TOPIC, lambda v: v.keys() == everyone, "all 200", timeout=20) for person in joined)
    )
    diffs = max(view.diffs for view in views)
    print(f"\n200 joins at once: at most {diffs} presence_diff frames per client")
    assert diffs < 50, f"{diffs} diffs for 200 joins: not coalesced"


async def test_a_killed_nodes_users_leave_within_two_ttls(cluster, people):
    watcher = await people.join("watcher", "ws-a")
    for user in ("dan", "eve"):
        await people.join(user, "ws-b")
    await watcher.until(TOPIC, keys_are("watcher", "dan", "eve"), "dan and eve present")
    cluster.nodes["ws-b"].stop(signal.SIGKILL)
    killed = time.monotonic()
    await watcher.until(TOPIC, keys_are("watcher"), "ws-b's users gone", timeout=2 * TTL + 1)
    print(f"\nnode killed: its users left after {time.monotonic() - killed:.2f}s (TTL {TTL}s)")
    assert time.monotonic() - killed <= 2 * TTL + 0.5


async def _nobody_left(people, settle: float):
    everyone = [person for person in people.sockets]
    await asyncio.gather(*(person.drain(settle) for person in everyone))
    assert all(person.leaves_seen == 0 for person in everyone), [(p.name, p.leaves_seen) for p in everyone]


async def test_an_owners_kill_9_makes_nobody_leave(cluster, people):
    from pubsub.core.ring import HashRing

    owner = HashRing(["ts-1", "ts-2"]).owner(TOPIC)
    survivor = "ts-1" if owner == "ts-2" else "ts-2"
    crowd = [await people.join(f"p{i}", ("ws-a", "ws-b")[i % 2]) for i in range(6)]
    expected = {f"p{i}" for i in range(6)}
    for person in crowd:
        await person.until(TOPIC, lambda v: v.keys() == expected, "everyone present")
    cluster.topic_servers[owner].stop(signal.SIGKILL)
    wait_for_ring(cluster, [survivor], timeout=6 * TTL)
    await _nobody_left(people, 2 * TTL)
    late = await people.join("late", "ws-a")
    expected.add("late")
    for person in [*crowd, late]:
        await person.until(TOPIC, lambda v: v.keys() == expected, "the new owner's presence is whole")


async def test_a_redis_restart_makes_nobody_leave(cluster, people):
    crowd = [await people.join(f"r{i}", ("ws-a", "ws-b")[i % 2]) for i in range(4)]
    expected = {f"r{i}" for i in range(4)}
    for person in crowd:
        await person.until(TOPIC, lambda v: v.keys() == expected, "everyone present")
    port = cluster.redis.port
    cluster.redis.stop()
    cluster.redis = RedisServer(port=port)  # empty: it keeps nothing on disk
    await _nobody_left(people, 3 * TTL)
    late = await people.join("late", "ws-b")
    expected.add("late")
    for person in [*crowd, late]:
        await person.until(TOPIC, lambda v: v.keys() == expected, "presence rebuilt after the restart", timeout=15)


def _api(node, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.port}/api/{path}",
        data=json.dumps(body).encode(),
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("cluster", REDIS_KINDS, indirect=True)
async def test_presence_from_the_http_api_and_from_another_process(cluster, people):
    for user, node in (("amy", "ws-b"), ("ben", "ws-b"), ("amy", "ws-b")):
        last = await people.join(user, node)
    await last.until(TOPIC, lambda v: v.keys() == {"amy", "ben"} and len(v.refs()["amy"]) == 2, "all three")
    # Node ws-a holds no member of the topic: it asks the owner. ws-b answers from its replica.
    for node in ("ws-a", "ws-b"):
        status, answer = await asyncio.to_thread(_api, cluster.nodes[node], "presence", {"topic": TOPIC})
        assert status == 200, answer
        presence = answer["result"]["presence"]
        assert {key: len(value["metas"]) for key, value in presence.items()} == {"amy": 2, "ben": 1}
        status, answer = await asyncio.to_thread(_api, cluster.nodes[node], "presence_stats", {"topic": TOPIC})
        assert (status, answer) == (200, {"result": {"num_clients": 3, "num_users": 2}})
    status, answer = await asyncio.to_thread(_api, cluster.nodes["ws-a"], "presence", {"topic": "room:empty"})
    assert (status, answer) == (200, {"result": {"presence": {}}})
    status, answer = await asyncio.to_thread(_api, cluster.nodes["ws-a"], "presence", {"topics": [TOPIC]})
    assert status == 400 and "topic" in answer["error"]["message"]
    script = f"import json, pubsub.presence as p; print(json.dumps(p.stats({TOPIC!r})))"
    env = dps_env(**cluster.settings, DPS_NODE="script")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", f"import django; django.setup(); {script}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"num_clients": 3, "num_users": 2}


async def test_a_server_joining_moves_presence_without_a_leave_or_a_join(cluster, people):
    from pubsub.core.ring import HashRing

    before, after = HashRing(["ts-1", "ts-2"]), HashRing(["ts-1", "ts-2", "ts-3"])
    topic = next(f"room:moving-{i}" for i in range(1000) if after.owner(f"room:moving-{i}") == "ts-3")
    assert before.owner(topic) != "ts-3"
    crowd = [await people.join(f"m{i}", ("ws-a", "ws-b")[i % 2], topic) for i in range(4)]
    expected = {f"m{i}" for i in range(4)}
    for person in crowd:
        await person.until(topic, lambda v: v.keys() == expected, "everyone present")
    diffs_before = [person.views[topic].diffs for person in crowd]
    cluster.start_topic_server("ts-3")
    wait_for_ring(cluster, ["ts-1", "ts-2", "ts-3"], timeout=6 * TTL)
    await asyncio.gather(*(person.drain(2 * TTL) for person in crowd))
    assert [person.views[topic].diffs for person in crowd] == diffs_before, "no diff: nobody came or went"
    late = await people.join("late", "ws-b", topic)
    expected.add("late")
    for person in [*crowd, late]:
        await person.until(topic, lambda v: v.keys() == expected, "the new owner's presence is whole")
