"""The Redis clients DPS builds for a URL (pubsub/transport/redis_clients.py)."""

import asyncio

import pytest
import redis

from pubsub.transport import redis_clients
from pubsub.transport.redis_clients import async_client
from tests.processes import RedisClusterServer

INTERLEAVINGS = 200  # a disconnect scheduled after 0..39 turns of the loop into a command's connect and write


async def test_a_connection_closed_under_a_write_fails_as_a_lost_connection(redis_server):
    """A connection closed (by another task: a pool dropping it after an error) while a command
    connects or writes must fail as a lost connection, a RedisError the transport and redis-py's
    retries handle; redis-py 8.1 let an AttributeError out, which killed a topic server's task."""
    outcomes = {}
    for turn in range(INTERLEAVINGS):
        connection = redis_clients.Connection(host="127.0.0.1", port=redis_server.port, socket_timeout=0.2)
        command = asyncio.ensure_future(connection.send_command("PING"))
        for _ in range(turn % 40):
            await asyncio.sleep(0)
        closing = asyncio.ensure_future(connection.disconnect(nowait=True))
        try:
            await command
            outcome = "sent"
        except redis.RedisError:
            outcome = "lost connection"
        except Exception as exc:  # what must not happen
            outcome = repr(exc)
        await closing
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert set(outcomes) <= {"sent", "lost connection"}, outcomes
    assert outcomes.get("lost connection"), f"no disconnect fell into a write: {outcomes}"


async def test_the_clients_for_a_url_use_that_connection(redis_server):
    client = async_client(redis_server.url, max_connections=4, wait=1.0)
    try:
        await client.ping()
        assert client.connection_pool.connection_class is redis_clients.Connection
    finally:
        await client.aclose()


@pytest.mark.processes
async def test_a_cluster_client_uses_that_connection_on_every_member():
    cluster = RedisClusterServer(masters=3)
    client = async_client(cluster.url, max_connections=4, wait=1.0)
    try:
        await client.ping()
        nodes = client.get_nodes()
        assert len(nodes) == 3
        assert {node.connection_class for node in nodes} == {redis_clients.Connection}
    finally:
        await client.aclose()
        cluster.stop()
