"""Pauses: a process frozen (SIGSTOP) for longer than the liveness TTL, then resumed (SIGCONT).

A long GC pause, a stalled VM or a throttled container look like this: the process is not dead, it
stops, the others take it for dead, and then it carries on from where it was, with what it had in
memory. On the failover workload (tests/workload.py: 3 topic servers, 2 nodes, 200 subscribers on
50 topics, each topic with subscribers on both nodes, one publisher at 100/s; default settings but a
2 s TTL and no per-socket rate limit for the publisher, who stands for many users), every publish
that got an ok must reach every subscriber of its topic exactly once, in the topic's one order,
whichever process froze: a topic server, a node, or Redis. Each test prints its phases' figures.
"""

import asyncio
import json
import time

import pytest

from pubsub.core.ring import HashRing
from tests.conftest import REDIS_KINDS
from tests.workload import TOPICS, TTL, assert_exactly_once, running_workload, wait_for_ring

pytestmark = pytest.mark.processes

FROZEN = 2.5 * TTL  # past the TTL: the others take the frozen process for dead meanwhile
SERVERS = ["ts-1", "ts-2", "ts-3"]


@pytest.fixture(params=REDIS_KINDS)
async def workload(request):
    """The failover workload over one Redis and over a 3-master Redis Cluster."""
    async with running_workload(request.param, both_nodes=True) as started:
        yield started


def published_by(cluster, server):
    """How many publishes server has numbered so far, from the snapshot it stores with its heartbeat."""
    with cluster.redis.client() as client:
        snapshot = client.get(f"dps:snapshot:topicserver:{{{server}}}")
    return json.loads(snapshot)["stats"].get("published", 0) if snapshot else 0


def frozen_redis(redis):
    """The redis-server to freeze: the one, or on a Redis Cluster the master that serves the liveness
    registry (every heartbeat stops with it, and the other masters take it for failed)."""
    if not hasattr(redis, "servers"):
        return redis
    port = redis.port_of("dps:topicservers")
    return next(member for member in redis.servers if member.port == port)


def assert_all_alive(cluster):
    for process in [*cluster.nodes.values(), *cluster.topic_servers.values()]:
        assert process.process.poll() is None, f"{process.name} exited:\n{process.output()[-3000:]}"


def lost_sample(workload, numbers, limit=10):
    """A few (topic, n) that some subscriber is missing, and how many subscribers miss each: for a failure."""
    counts = {}
    for index, missing in workload.missing(numbers).items():
        for n in missing:
            key = (workload.subscribers[index][0], n)
            counts[key] = counts.get(key, 0) + 1
    return sorted(counts.items(), key=lambda item: item[0][1])[:limit]


async def test_an_owner_frozen_past_the_ttl_then_resumed(workload):
    """ts-2 freezes mid-stream for 2.5 TTLs: the others take its topics over; then it wakes up with
    whatever batch and ring it held, rejoins the ring and serves its topics again."""
    cluster = workload.cluster
    await workload.publish(2)
    frozen_from = workload.counter
    cluster.topic_servers["ts-2"].freeze()
    frozen_at = time.monotonic()
    publishing = asyncio.ensure_future(workload.publish(FROZEN))
    failover = await asyncio.to_thread(wait_for_ring, cluster, ["ts-1", "ts-3"])
    await publishing
    cluster.topic_servers["ts-2"].resume()
    resumed_from = workload.counter
    publishing = asyncio.ensure_future(workload.publish(2))
    rejoined = await asyncio.to_thread(wait_for_ring, cluster, SERVERS)
    await publishing
    served_before = published_by(cluster, "ts-2")
    after_from = workload.counter
    await workload.publish(2)
    await workload.settle()
    phases = {
        "before the freeze": range(0, frozen_from),
        f"frozen ({FROZEN:.0f}s)": range(frozen_from, resumed_from),
        "resumed, rejoining": range(resumed_from, after_from),
        "after the rejoin": range(after_from, workload.counter),
    }
    for phase, numbers in phases.items():
        print(f"\n{phase}: {workload.report(numbers)}")
    print(
        f"\nring without ts-2 after {failover:.2f}s of the freeze (TTL {TTL}s); "
        f"ts-2 back in the ring {rejoined:.2f}s after resuming ({time.monotonic() - frozen_at:.1f}s of load)"
    )
    everything = range(0, workload.counter)
    assert failover <= 2 * TTL
    assert_all_alive(cluster)
    assert not workload.missing(everything), f"lost (topic, n) -> subscribers: {lost_sample(workload, everything)}"
    assert_exactly_once(workload.report())
    # It serves again: its own topics' publishes after the rejoin are numbered by it.
    assert any(HashRing(SERVERS).owner(topic) == "ts-2" for topic in TOPICS), "ts-2 owns some of the topics"
    deadline = time.monotonic() + 4 * TTL
    while published_by(cluster, "ts-2") <= served_before:
        assert time.monotonic() < deadline, "ts-2 numbered nothing after it rejoined the ring"
        await asyncio.sleep(0.1)


async def test_a_node_frozen_past_the_ttl_then_resumed(workload):
    """ws-b (half the subscribers, not the publisher's node) freezes mid-stream for 2.5 TTLs: the
    owners drop it meanwhile; once it resumes, its subscribers get every accepted message once, in
    order, even with nothing published after the freeze (no later message shows the node its gap)."""
    cluster = workload.cluster
    await workload.publish(2)
    frozen_from = workload.counter
    cluster.nodes["ws-b"].freeze()
    await workload.publish(FROZEN)
    cluster.nodes["ws-b"].resume()
    resumed_from = workload.counter
    await workload.settle()
    missed_at_the_tail = lost_sample(workload, range(0, resumed_from))
    await workload.publish(2)
    await workload.settle()
    phases = {
        "before the freeze": range(0, frozen_from),
        f"ws-b frozen ({FROZEN:.0f}s)": range(frozen_from, resumed_from),
        "after it resumed": range(resumed_from, workload.counter),
    }
    for phase, numbers in phases.items():
        print(f"\n{phase}: {workload.report(numbers)}")
    everything = range(0, workload.counter)
    assert_all_alive(cluster)
    assert not missed_at_the_tail, f"not caught up before the next publish: {missed_at_the_tail}"
    assert not workload.missing(everything), f"lost (topic, n) -> subscribers: {lost_sample(workload, everything)}"
    assert_exactly_once(workload.report())


async def test_redis_frozen_then_resumed(workload):
    """Redis (on a Redis Cluster: one master) freezes for 2 TTLs mid-stream. Publishes meanwhile are
    held, then accepted or refused with an error; none accepted is lost or repeated, every process
    carries on, and service resumes by itself."""
    cluster = workload.cluster
    await workload.publish(2)
    frozen_from = workload.counter
    redis = frozen_redis(cluster.redis)
    redis.freeze()
    try:
        await workload.publish(2 * TTL)
    finally:
        redis.resume()
    resumed_at = time.monotonic()
    window_from = workload.counter
    await workload.publish(2 * TTL)  # the recovery window
    steady_from = workload.counter
    await workload.publish(2)
    await workload.settle()
    phases = {
        "before the freeze": range(0, frozen_from),
        f"Redis frozen ({2 * TTL:.0f}s)": range(frozen_from, window_from),
        f"{2 * TTL:.0f}s after it resumed": range(window_from, steady_from),
        "steady after that": range(steady_from, workload.counter),
    }
    for phase, numbers in phases.items():
        print(f"\n{phase}: {workload.report(numbers)}")
    print(f"\nsteady phase from {steady_from} ({time.monotonic() - resumed_at:.1f}s after the resume)")
    everything = range(0, workload.counter)
    assert_all_alive(cluster)
    assert not workload.missing(everything), f"lost (topic, n) -> subscribers: {lost_sample(workload, everything)}"
    assert_exactly_once(workload.report())
    assert workload.report()["unanswered"] == 0, "every publish got a reply, ok or an error"
    assert workload.report(range(steady_from, workload.counter))["accepted"] > 0, "service resumed"
