"""Concurrent appends coalesce into pipelines, against a real (private) Redis."""

import asyncio

import pytest

from pubsub.exceptions import TransportError
from pubsub.transport.redis import RedisTransport

pytestmark = pytest.mark.processes


async def test_concurrent_appends_share_round_trips_and_keep_their_order(redis_server):
    transport = RedisTransport(redis_server.url)
    try:
        streams = [f"dps:test:{{s{i}}}" for i in range(10)]
        callers = 2000  # far more than the 16 pooled connections: none may be refused
        await asyncio.gather(*(transport.append(streams[n % 10], str(n).encode()) for n in range(callers)))
        coalescer = transport.appends
        print(f"\n{callers} concurrent appends in {coalescer.pipelines} round trips")
        assert coalescer.appends == callers
        assert coalescer.pipelines <= callers / 20, "concurrent appends should share pipelines"
        for i, stream in enumerate(streams):  # each stream holds its callers' entries in call order
            entries = await transport.read(stream, "0-0", callers, 0)
            assert [int(data) for _, data in entries] == list(range(i, callers, 10))
    finally:
        await transport.close()


async def test_an_append_to_an_unreachable_redis_fails_after_a_bounded_retry(redis_server):
    transport = RedisTransport(redis_server.url)
    try:
        await transport.append("dps:test:{a}", b"1")
        redis_server.stop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TransportError):
            await transport.append("dps:test:{a}", b"2")
        assert loop.time() - started < 15, "unavailable is said after a bounded retry"
    finally:
        await transport.close()
