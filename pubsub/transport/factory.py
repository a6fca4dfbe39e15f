"""The Redis transport for a URL: one Redis (``redis://``) or a Redis Cluster (``redis+cluster://``).

Above both, so neither imports the other."""

from __future__ import annotations

from pubsub.transport.redis import RedisTransport
from pubsub.transport.redis_clients import is_cluster
from pubsub.transport.redis_cluster import RedisClusterTransport

__all__ = ["redis_transport"]


def redis_transport(url: str, maxlen: int = 100_000, wait: tuple[int, float] = (0, 1.0)) -> RedisTransport:
    """The transport for a Redis URL: one Redis, or a Redis Cluster for ``redis+cluster://``.

    wait: (replicas, seconds) that an append and a batch's numbers wait for (``WAIT``); 0: none."""
    if is_cluster(url):
        return RedisClusterTransport(url, maxlen)
    return RedisTransport(url, maxlen, wait)
