"""DPS on a Redis Cluster while the cluster itself changes: slots move (resharding) and a master
fails over, under the failover suite's workload (3 topic servers, 2 nodes, 200 subscribers on 50
topics, 100 publishes/s). Every publish that got an ok reply must reach each subscriber of its
topic exactly once, all of them in one order."""

import asyncio
import signal
import time

import pytest

from pubsub.transport.base import inbox_stream, node_stream
from tests.test_failover import TOPICS, assert_exactly_once, running_workload

pytestmark = pytest.mark.processes

SERVERS = ("ts-1", "ts-2", "ts-3")
STREAMS = [node_stream("ws-a"), node_stream("ws-b"), *(inbox_stream(name) for name in SERVERS)]
ROLE_TIMEOUT = 30.0


@pytest.fixture
async def cluster_workload(request):
    """The workload on a Redis Cluster; request.param: "redis-cluster" or "redis-cluster-replicated"."""
    async with running_workload(request.param) as started:
        yield started


async def publish_while(workload, job):
    """Publish in half-second rounds until the blocking job (run in a thread) is done; its result."""
    running = asyncio.ensure_future(asyncio.to_thread(job))
    while not running.done():
        await workload.publish(0.5)
    return await running


async def publish_after(workload, what):
    """A second more of publishing, then every accepted publish must have arrived exactly once."""
    await workload.publish(1)
    await workload.settle()
    report = workload.report()
    print(f"\n{what}, under load: {report}")
    assert_exactly_once(report)


def streams_on(redis, port):
    return [stream for stream in STREAMS if redis.port_of(stream) == port]


def busiest_master(redis) -> tuple[int, int | None, list[str]]:
    """The master holding the most DPS streams, its replica (if it has one), and those streams."""
    roles = redis.roles()
    masters = [port for port, role in roles.items() if role["role"] == "master"]
    master = max(masters, key=lambda port: len(streams_on(redis, port)))
    replica = next((port for port, role in roles.items() if role["master"] == roles[master]["id"]), None)
    return master, replica, streams_on(redis, master)


def wait_for_roles(redis, check, what, timeout=ROLE_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        roles = redis.roles()
        if check(roles):
            return roles
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s: {redis.roles()}")


@pytest.mark.parametrize("cluster_workload", ["redis-cluster"], indirect=True)
async def test_resharding_mid_stream(cluster_workload):
    """Every slot holding DPS keys on the master with the most DPS streams (node streams, inboxes,
    the rooms' numbers and histories) moves to another master, slot by slot as ``redis-cli --cluster
    reshard`` does it, while messages flow: the clients follow MOVED/ASK, and a blocked XREAD whose
    stream moved is redirected."""
    workload, redis = cluster_workload, cluster_workload.cluster.redis
    await workload.publish(1)
    source, _, moving = busiest_master(redis)
    target = next(port for port, role in redis.roles().items() if role["role"] == "master" and port != source)
    keys = STREAMS + [key for topic in TOPICS for key in (f"dps:seq:{{{topic}}}", f"dps:hist:{{{topic}}}")]
    slots = sorted({redis.slot_of(key) for key in keys if redis.port_of(key) == source})
    assert moving, "no DPS stream lives on any master?"

    def reshard():
        for slot in slots:
            redis.move_slot(slot, source, target)

    started = time.monotonic()
    await publish_while(workload, reshard)
    took = time.monotonic() - started
    assert all(redis.port_of(stream) == target for stream in moving)
    await publish_after(workload, f"moved {len(slots)} slots ({', '.join(moving)} among them) in {took:.1f} s")


@pytest.mark.parametrize("cluster_workload", ["redis-cluster-replicated"], indirect=True)
async def test_a_planned_failover_of_a_master_mid_stream(cluster_workload):
    """``CLUSTER FAILOVER`` on a replica (maintenance: the replica catches up, then takes over) of
    the master holding the most DPS streams, while messages flow."""
    workload, redis = cluster_workload, cluster_workload.cluster.redis
    await workload.publish(1)
    master, replica, moving = busiest_master(redis)

    def fail_over():
        redis.cli(replica, "cluster", "failover")
        wait_for_roles(redis, lambda r: r[replica]["role"] == "master" and r[master]["role"] == "slave", "no switch")

    await publish_while(workload, fail_over)
    assert all(redis.port_of(stream) == replica for stream in moving)
    await publish_after(workload, f"planned failover of the master of {', '.join(moving)}")


@pytest.mark.parametrize("cluster_workload", ["redis-cluster-replicated"], indirect=True)
async def test_kill_9_of_a_master_mid_stream(cluster_workload):
    """A master holding DPS streams dies (kill -9); its replica is promoted after the cluster's node
    timeout (2 s here). Meanwhile the cluster refuses its slots: publishes are held and retried, then
    refused with an error reply (the client knows). Accepted ones are delivered exactly once. What
    Redis' asynchronous replication can lose (a write the master acknowledged and had not yet sent to
    its replica) does not happen on loopback, where a replica is at most a moment behind; DPS does
    not WAIT for replicas, and the docs say so (docs/clusters.md)."""
    workload, redis = cluster_workload, cluster_workload.cluster.redis
    await workload.publish(1)
    await workload.settle()
    master, replica, moving = busiest_master(redis)
    killed = time.monotonic()
    next(member for member in redis.servers if member.port == master).stop(signal.SIGKILL)

    def promoted():
        wait_for_roles(redis, lambda r: r[replica]["role"] == "master" and r[replica]["slots"] > 0, "no promotion")
        redis.wait_until_served()
        return time.monotonic() - killed

    took = await publish_while(workload, promoted)
    steady_from = workload.counter
    await workload.publish(2)
    await workload.settle()
    whole, steady = workload.report(), workload.report(range(steady_from, workload.counter))
    print(f"\nkill -9 of the master of {', '.join(moving)}; replica serving after {took:.1f} s")
    print(f"whole run: {whole}\nafter the promotion: {steady}")
    for process in [*workload.cluster.nodes.values(), *workload.cluster.topic_servers.values()]:
        assert process.process.poll() is None, f"{process.name} exited:\n{process.output()[-2000:]}"
    assert steady["accepted"] > 0 and steady["lost"] == 0 and steady["duplicates"] == 0, steady
    assert whole["duplicates"] == 0 and whole["topics_out_of_order"] == 0, whole
    assert whole["lost"] == 0, whole
