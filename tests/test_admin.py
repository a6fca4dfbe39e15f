"""The admin's topic ownership page and the Prometheus metrics, against real processes."""

import asyncio
import json
import time
import urllib.request

import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from prometheus_client.parser import text_string_to_metric_families

from pubsub.core.ring import HashRing
from pubsub.socket.consumer import PhoenixSocket
from tests.conftest import Cluster
from tests.processes import free_port

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

TTL = "1.5"
TIMEOUT = 15
RING = HashRing(["ts-1", "ts-2"])


@pytest.fixture(scope="module")
def admin_cluster():
    started = Cluster(DPS_LIVENESS_TTL=TTL)
    yield started
    started.stop()


@pytest.fixture
def cluster_layer(settings, admin_cluster):
    """Point this process's layer (which the page reads through) at the cluster's Redis."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "pubsub.layer.TopicRingLayer",
            "CONFIG": {
                "redis_url": admin_cluster.redis.url,
                "topic_servers": ["ts-1", "ts-2"],
                "liveness_ttl": float(TTL),
            },
        }
    }
    return admin_cluster


@pytest.fixture
async def staff_client(async_client):
    user = await sync_to_async(User.objects.create_superuser)("boss", "b@example.com", "pw")
    await async_client.aforce_login(user)
    return async_client


async def page_json(client, query=""):
    response = await client.get(f"/admin/ownership/?format=json{query}")
    assert response.status_code == 200
    return json.loads(response.content)


async def wait_for_report(client, predicate, what):
    deadline = time.monotonic() + TIMEOUT
    while True:
        report = await page_json(client)
        if predicate(report):
            return report
        assert time.monotonic() < deadline, f"{what} never showed on the page: {report}"
        await asyncio.sleep(0.2)


async def join(ws, topic):
    await ws.send(json.dumps(["1", "1", topic, "phx_join", {}]))
    assert json.loads(await ws.recv())[4]["status"] == "ok"


async def test_every_joined_topic_is_listed_with_its_owner_and_counts(cluster_layer, staff_client):
    cluster = cluster_layer
    topics = {"page:one": {"ws-a": 2, "ws-b": 1}, "page:two": {"ws-b": 3}, "page:three": {"ws-a": 1}}
    assert {RING.owner(t) for t in topics} == {"ts-1", "ts-2"}, "the topics cover both owners"
    sockets = []
    try:
        for topic, per_node in topics.items():
            for node, count in per_node.items():
                for _ in range(count):
                    ws = await websockets.connect(cluster.nodes[node].url())
                    await join(ws, topic)
                    sockets.append(ws)

        def complete(report):
            rows = {row["topic"]: row for row in report["topics"]}
            # Nodes and topic servers report on their own heartbeats: wait for both sides of each topic.
            return all(t in rows and rows[t]["subscribers"] == c and rows[t]["reported_by"] for t, c in topics.items())

        report = await wait_for_report(staff_client, complete, "the joined topics")
        rows = {row["topic"]: row for row in report["topics"]}
        for topic, per_node in topics.items():
            assert rows[topic]["owner"] == RING.owner(topic)
            assert rows[topic]["reported_by"] == RING.owner(topic)
            assert rows[topic]["total"] == sum(per_node.values())
        assert {s["name"]: s["live"] for s in report["servers"]} == {"ts-1": True, "ts-2": True}
        nodes = {n["name"]: n for n in report["nodes"]}
        assert nodes["ws-a"]["connections"] >= 3 and nodes["ws-b"]["connections"] >= 4
        html = (await staff_client.get("/admin/ownership/")).content.decode()
        for topic in topics:
            assert f'data-topic="{topic}"' in html
        assert "Rebalance preview" in html and "ts-3 joins" in html
    finally:
        for ws in sockets:
            await ws.close()


async def test_lookup_works_for_a_topic_nobody_joined(cluster_layer, staff_client):
    for topic in ("never:joined", "room:1", "room:3"):
        report = await page_json(staff_client, f"&topic={topic}")
        assert report["lookup"] == {"topic": topic, "owner": RING.owner(topic)}
        html = (await staff_client.get(f"/admin/ownership/?topic={topic}")).content.decode()
        assert f'<strong class="dps-owner">{RING.owner(topic)}</strong>' in html


async def test_sorting_and_paging(cluster_layer, staff_client):
    for query in ("?sort=subscribers&dir=desc", "?sort=owner", "?sort=per_s&page=2", "?sort=bogus&page=x"):
        assert (await staff_client.get(f"/admin/ownership/{query}")).status_code == 200


async def test_non_staff_are_sent_to_login(async_client):
    response = await async_client.get("/admin/ownership/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    user = await sync_to_async(User.objects.create_user)("guest", "g@example.com", "pw")
    await async_client.aforce_login(user)
    response = await async_client.get("/admin/ownership/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


async def test_embedded_mode_shows_live_ownership(staff_client):
    communicator = WebsocketCommunicator(PhoenixSocket.as_asgi(), "/socket/websocket?vsn=2.0.0")
    assert (await communicator.connect())[0]
    try:
        await communicator.send_to(text_data='["1","1","topics:matrix","phx_join",{}]')
        await communicator.receive_from()

        def listed(report):
            return any(r["topic"] == "topics:matrix" and r["subscribers"] == {"ws-1": 1} for r in report["topics"])

        report = await wait_for_report(staff_client, listed, "the embedded topic")
        assert next(r for r in report["topics"] if r["topic"] == "topics:matrix")["owner"] == "ts-1"
    finally:
        await communicator.disconnect()
        await get_channel_layer().flush()


def scrape(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    return {name: family.samples[0].value for name, family in families.items()}


async def test_metrics_parse_and_move(cluster_factory):
    metrics_port = free_port()
    cluster = cluster_factory(
        topic_servers=("ts-1",), topic_server_args={"ts-1": ["--metrics-port", str(metrics_port)]}
    )
    node_url = f"http://127.0.0.1:{cluster.nodes['ws-a'].port}/metrics"
    server_url = f"http://127.0.0.1:{metrics_port}/metrics"
    before_node, before_server = scrape(node_url), scrape(server_url)
    async with (
        websockets.connect(cluster.nodes["ws-a"].url()) as a,
        websockets.connect(cluster.nodes["ws-b"].url()) as b,
    ):
        await join(a, "metered")
        await join(b, "metered")
        for n in range(5):
            await a.send(json.dumps(["1", str(n), "metered", "publish", ["e", {"n": n}]]))
        for ws in (a, b):
            got = 0
            while got < 5:
                got += json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))[3] == "e"
        node, served = scrape(node_url), scrape(server_url)
        assert node["dps_node_connections"] == 1
    assert node["dps_node_publishes"] - before_node.get("dps_node_publishes", 0) == 5
    assert node["dps_node_delivered"] - before_node.get("dps_node_delivered", 0) == 5
    assert node["dps_node_joins"] >= 1 and node["dps_node_dropped"] == 0
    assert served["dps_topicserver_published"] - before_server["dps_topicserver_published"] == 5
    assert served["dps_topicserver_node_messages"] - before_server["dps_topicserver_node_messages"] == 10
    assert served["dps_topicserver_topics"] == 1 and served["dps_topicserver_nodes"] == 2


async def test_nodes_report_before_their_first_websocket(cluster_factory):
    """A node joins the cluster when daphne starts: the admin page lists it before anyone connects."""
    cluster = cluster_factory()
    client = cluster.redis.client()
    deadline = time.monotonic() + TIMEOUT
    while not all(client.exists(f"dps:snapshot:node:{{{name}}}") for name in cluster.nodes):
        assert time.monotonic() < deadline, "a node without websockets never reported"
        await asyncio.sleep(0.1)
    assert {name.decode() for name in client.zrange("dps:nodes", 0, -1)} == set(cluster.nodes)
    client.close()


async def test_the_page_warns_while_the_development_key_is_in_use(staff_client, settings):
    settings.DPS_USING_DEVELOPMENT_KEY = True
    assert "SECRET_KEY is the development key" in (await staff_client.get("/admin/ownership/")).content.decode()
    settings.DPS_USING_DEVELOPMENT_KEY = False
    assert "development key" not in (await staff_client.get("/admin/ownership/")).content.decode()


async def test_presence_counts_show_per_topic(cluster_layer, staff_client):
    from pubsub.socket import tokens

    cluster = cluster_layer
    sockets = []
    try:
        for user, node in (("ann", "ws-a"), ("ann", "ws-b"), ("bo", "ws-b")):
            ws = await websockets.connect(cluster.nodes[node].url(f"vsn=2.0.0&token={tokens.sign(user)}"))
            await join(ws, "page:present")
            sockets.append(ws)

        def counted(report):
            rows = {row["topic"]: row for row in report["topics"]}
            row = rows.get("page:present")
            return row is not None and (row["present_users"], row["present_clients"]) == (2, 3)

        await wait_for_report(staff_client, counted, "2 users (3 clients) present")
        html = (await staff_client.get("/admin/ownership/?sort=present&dir=desc")).content.decode()
        assert "present: users (clients)" in html and "2 (3)" in html
    finally:
        for ws in sockets:
            await ws.close()
