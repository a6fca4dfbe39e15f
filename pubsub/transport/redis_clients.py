"""Redis clients for a URL: one Redis (``redis://``) or a Redis Cluster (``redis+cluster://``).

A cluster URL lists one or more of its members, ``redis+cluster://host:port[,host:port...]``
(``rediss+cluster://`` for TLS, ``user:password@`` before the first member); the client learns
the rest of the cluster from them and follows ``MOVED``/``ASK`` while slots move.
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import RedisClusterException, RedisError

__all__ = [
    "CONNECT_TIMEOUT",
    "REDIS_ERRORS",
    "CLUSTER_SCHEMES",
    "is_cluster",
    "cluster_members",
    "async_client",
    "sync_client",
    "BoundedRedisCluster",
    "connection_problem",
]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

CONNECT_TIMEOUT = 5.0
# What a Redis command may raise: a cluster client's own errors (no slot served) are not RedisErrors.
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def cluster_members(url: str) -> tuple[list[tuple[str, int]], dict]:
    """The listed members and the connection options (credentials, TLS) of a cluster URL.

    Raises ValueError, with the reason, for a URL that names no usable member."""
    parsed = urlsplit(url)
    if parsed.scheme not in CLUSTER_SCHEMES:
        raise ValueError("it must start with redis+cluster:// or rediss+cluster://")
    credentials, _, hosts = parsed.netloc.rpartition("@")
    options: dict = {"ssl": parsed.scheme == "rediss+cluster"}
    if credentials:
        username, _, password = credentials.partition(":")
        options.update(username=unquote(username) or None, password=unquote(password) or None)
    if parsed.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    members = []
    for member in filter(None, hosts.split(",")):
        host, _, port = member.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{member!r} is not host:port")
        members.append((host.strip("[]"), int(port)))
    if not members:
        raise ValueError("it names no member (redis+cluster://host:port[,host:port...])")
    return members, options


class _WriteErrorsAsConnectionErrors:
    """redis-py 8.1 lets a transport's own error escape when a connection is closed under a write
    (``'NoneType' object has no attribute 'writelines'``, redis/redis-py#4287): no RedisError, so it
    bypasses the client's retries and DPS's handling of an unreachable Redis, and it killed a topic
    server's liveness task once. It is a lost connection: raised as one."""

    async def send_packed_command(self, command, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (AttributeError, TypeError) as exc:
            await self.disconnect(nowait=True)
            raise redis.ConnectionError(f"the connection closed under a write ({exc})") from exc


class Connection(_WriteErrorsAsConnectionErrors, aioredis.Connection):
    pass


class SSLConnection(_WriteErrorsAsConnectionErrors, aioredis.SSLConnection):
    pass


class _RedisCluster(AsyncRedisCluster):
    """A cluster client whose connections are the Connection above (redis-py's cluster client takes
    no connection class: it goes in the shared node options, as redis-py itself adds options)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        tls = self.nodes_manager.connection_kwargs.get("connection_class") is aioredis.SSLConnection
        connection_class = SSLConnection if tls else Connection
        self.nodes_manager.connection_kwargs["connection_class"] = connection_class
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = connection_class


class BoundedRedisCluster(_RedisCluster):
    """A cluster client whose commands wait for one of ``limit`` slots.

    redis-py's cluster client raises ``MaxConnectionsError`` when a member's connections are all
    busy; a plain ``BlockingConnectionPool`` waits. A join or recovery storm must wait, not fail,
    so commands queue here (pipelines take one connection per member and are few)."""

    def __init__(self, *args, limit: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._limit = limit
        self._slots: asyncio.Semaphore | None = None

    async def execute_command(self, *args, **kwargs):
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        async with self._slots:
            return await super().execute_command(*args, **kwargs)


def async_client(url: str, *, max_connections: int, wait: float | None = None, **options):
    """An asyncio client for url. With wait, a command finding every connection busy waits (up to
    wait seconds on one Redis) instead of failing."""
    if not is_cluster(url):
        scheme = urlsplit(url).scheme
        if scheme in ("redis", "rediss"):
            options["connection_class"] = SSLConnection if scheme == "rediss" else Connection
        if wait is None:
            return aioredis.Redis.from_url(url, max_connections=max_connections, **options)
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=wait, **options)
        return aioredis.Redis(connection_pool=pool)
    members, connection = cluster_members(url)
    startup = [AsyncClusterNode(host, port) for host, port in members]
    if wait is None:
        return _RedisCluster(startup_nodes=startup, max_connections=max_connections, **connection, **options)
    # Pipelines run beside the bounded commands, one connection per member each: room for them.
    return BoundedRedisCluster(
        startup_nodes=startup,
        max_connections=2 * max_connections,
        limit=max_connections,
        **connection,
        **options,
    )


def sync_client(url: str, **options):
    """A blocking client for url (a heartbeat thread, a start-up check, tests)."""
    if not is_cluster(url):
        return redis.Redis.from_url(url, **options)
    from redis.cluster import ClusterNode, RedisCluster

    members, connection = cluster_members(url)
    return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in members], **connection, **options)


def connection_problem(url: str, timeout: float = 3.0) -> str | None:
    """Why url cannot serve DPS (unreachable, or a cluster member named as one Redis, or the
    reverse), in words for the user; None if it answers as the URL says it should."""
    from redis.exceptions import RedisClusterException, RedisError

    client = None
    try:
        client = sync_client(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        client.ping()
        if not is_cluster(url) and client.info("cluster").get("cluster_enabled"):
            netloc = urlsplit(url).netloc.rpartition("@")[2]
            return f"it is a member of a Redis Cluster: name it redis+cluster://{netloc} (one member is enough)"
    except (RedisError, RedisClusterException, OSError) as exc:
        if is_cluster(url) and "cluster mode is not enabled" in str(exc).lower():
            return "it is a single Redis, not a Redis Cluster: name it redis://host:port/db"
        return f"Redis is unreachable ({exc}). Start Redis there"
    finally:
        if client is not None:
            client.close()
    return None
