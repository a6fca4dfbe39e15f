"""The Redis streams transport: one stream per topic server inbox and per websocket node.

Writes share one small connection pool per process (never a connection per
socket: redis-py's default pool of 100 turned 1,000 simultaneous handshakes into
HTTP 500s with channels_redis). The pool blocks when all its connections are busy
(redis-py's plain pool raises "Too many connections", which refused joins in a
join storm), and appends, the hot path, are coalesced into pipelines
(``coalescer.py``): one round trip carries every append made while the previous
one was in flight. Each blocking reader gets its own connection
with no socket timeout, because redis-py 8's default 5 s timeout would break an
``XREAD BLOCK`` (channels_redis#422); the block itself bounds the wait.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pubsub.exceptions import TransportError
from pubsub.transport.base import FIRST_ID
from pubsub.transport.coalescer import AppendCoalescer
from pubsub.transport.redis_clients import CONNECT_TIMEOUT, REDIS_ERRORS, async_client
from pubsub.transport.redis_coordination import RedisCoordination
from pubsub.transport.redis_fencing import RedisFencing
from pubsub.transport.redis_keys import ENTRY_FIELD, REGISTRY_KEYS

__all__ = ["RedisTransport", "REGISTRY_KEYS"]

logger = logging.getLogger(__name__)

_WRITE_POOL_SIZE = 16
_WRITE_TIMEOUT = 10.0
# Appends that fail for want of a connection are tried again for about 1.5 s (on top of
# redis-py's own retries) before the caller is told Redis is unavailable.
_APPEND_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)


class RedisTransport(RedisCoordination, RedisFencing):
    """Streams over Redis (>= 6.2): XADD with ``MAXLEN ~``, XREAD BLOCK, liveness in sorted sets."""

    # Errors after which a command is worth trying again (a cluster adds its own: slots moving).
    TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

    def __init__(self, url: str, maxlen: int = 100_000, wait: tuple[int, float] = (0, 1.0)):
        self.url = url
        self.maxlen = maxlen
        # Redis replicates asynchronously: with replicas > 0, an append (what a publisher's ok means)
        # is acknowledged only once that many replicas have it, and a batch's numbers and history wait
        # for them too (a promoted replica then knows them). Durability, not ownership: WAIT narrows
        # what a failover loses, it does not make Redis consistent.
        self.wait_replicas, self.wait_ms = wait[0], int(wait[1] * 1000)
        self._writer = async_client(
            url,
            max_connections=_WRITE_POOL_SIZE,
            wait=_WRITE_TIMEOUT,  # how long a command may wait for a free connection
            socket_timeout=_WRITE_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
        )
        # The coalescer has one pipeline in flight at a time, so it gets a connection of its own:
        # the hot path skips the shared pool's wait-for-a-free-connection machinery.
        self._appender = async_client(
            url, max_connections=2, socket_timeout=_WRITE_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT
        )
        self._readers: dict = {}
        self.appends = AppendCoalescer(self._append_pipeline)
        self._sync_clients: list = []
        self._legacy_sequences: bool | None = None  # does the pre-0.13 dps:seq hash exist?

    def _reader(self, stream: str):
        reader = self._readers.get(stream)
        if reader is None:
            reader = self._readers[stream] = async_client(
                self.url, max_connections=1, socket_timeout=None, socket_connect_timeout=CONNECT_TIMEOUT
            )
        return reader

    async def ping(self) -> None:
        try:
            await self._writer.ping()
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"Redis at {self.url} is unreachable: {exc}") from exc

    async def append(self, stream: str, data: bytes) -> None:
        await self.appends.append(stream, data)

    async def append_many(self, items: list[tuple[str, bytes]]) -> None:
        await self.appends.append_many(items)

    async def _append_pipeline(self, items: list[tuple[str, bytes]]) -> None:
        """One pipeline of XADDs for the coalescer, retried a while if Redis cannot be reached."""
        for delay in (*_APPEND_RETRY_DELAYS, None):
            try:
                if len(items) == 1 and not self.wait_replicas:  # one plain command is cheaper than a pipeline
                    stream, data = items[0]
                    await self._appender.xadd(stream, {ENTRY_FIELD: data}, maxlen=self.maxlen, approximate=True)
                    return
                async with self._appender.pipeline(transaction=False) as pipe:
                    for stream, data in items:
                        pipe.xadd(stream, {ENTRY_FIELD: data}, maxlen=self.maxlen, approximate=True)
                    if self.wait_replicas:
                        pipe.execute_command("WAIT", self.wait_replicas, self.wait_ms)
                    replies = await pipe.execute()
                if self.wait_replicas and replies[-1] < self.wait_replicas:
                    raise TransportError(
                        f"{len(items)} appends reached {replies[-1]} of the {self.wait_replicas} replicas "
                        f"DPS_REDIS_WAIT_REPLICAS asks for within {self.wait_ms} ms"
                    )
                return
            except self.TRANSIENT_ERRORS as exc:
                await self._drop_connections()
                await self._drop_idle(self._appender)
                if delay is None:
                    raise TransportError(f"XADD of {len(items)} entries failed: {exc}") from exc
                await asyncio.sleep(delay)
            except REDIS_ERRORS as exc:
                raise TransportError(f"XADD of {len(items)} entries failed: {exc}") from exc

    async def last_id(self, stream: str) -> str:
        try:
            newest = await self._writer.xrevrange(stream, count=1)
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"XREVRANGE {stream} failed: {exc}") from exc
        return newest[0][0].decode() if newest else FIRST_ID

    async def read(self, stream: str, after: str, count: int, block_ms: int) -> list[tuple[str, bytes]]:
        try:
            reply = await self._reader(stream).xread({stream: after}, count=count, block=block_ms or None)
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"XREAD {stream} failed: {exc}") from exc
        if not reply:
            return []
        out = []
        for entry_id, fields in reply[0][1]:
            data = fields.get(ENTRY_FIELD)
            out.append((entry_id.decode(), data if data is not None else b""))
        return out

    # Liveness

    # Snapshots for the admin page: one key per process, found through the liveness registry.

    def id_time(self, entry_id: str) -> float | None:
        return int(entry_id.split("-", 1)[0]) / 1000

    # Coordination: ring generations, barriers, sequence numbers and inbox cursors (see topicserver/server.py)

    # Fencing (topicserver/fencing.py): checked by scripts next to the keys they guard

    # What one Redis and a Redis Cluster do differently (pubsub/transport/redis_cluster.py)

    SINGLE_KEY_TRANSACTIONS = True

    async def _in_order(self, send, script):
        """send's commands, then the script (script, keys, args), whose reply is returned: one
        pipeline, since one connection to one Redis keeps the order (and a crash leaves a prefix)."""
        async with self._writer.pipeline(transaction=False) as pipe:
            send(pipe)
            if script is not None:
                source, keys, args = script
                pipe.execute_command("EVALSHA", source.sha, len(keys), *keys, *args)
            elif not len(pipe):
                return None
            results = await pipe.execute(raise_on_error=False)
        if script is None:
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return None
        for result in results[:-1]:
            if isinstance(result, Exception):
                raise result
        if isinstance(results[-1], NoScriptError):  # the appends are in: load the script, run it alone
            return (await self._run_scripts([script]))[0]
        if isinstance(results[-1], Exception):
            raise results[-1]
        return results[-1]

    async def _get_many(self, keys: list[str]) -> list:
        return await self._writer.mget(keys) if keys else []

    async def _call(self, *command):
        try:
            return await self._writer.execute_command(*command)
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"{command[0]} failed: {exc}") from exc

    async def _drop_connections(self) -> None:
        """After a failure the idle pooled connections may be stale (Redis restarted): open fresh ones.

        Connections in use are left to their commands (disconnecting them too made a burst of
        failures fail everything else in flight)."""
        await self._drop_idle(self._writer)

    @staticmethod
    async def _drop_idle(client) -> None:
        try:
            await client.connection_pool.disconnect(inuse_connections=False)
        except REDIS_ERRORS:
            pass

    async def close(self) -> None:
        await self.appends.close()
        for client in [self._writer, self._appender, *self._readers.values()]:
            await client.aclose()
        self._readers.clear()
        for client in self._sync_clients:
            client.close()
        self._sync_clients.clear()
