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
import secrets
import time

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pubsub.exceptions import TransportError
from pubsub.transport import redis_scripts
from pubsub.transport.base import FIRST_ID, Numbering, new_epoch
from pubsub.transport.coalescer import AppendCoalescer
from pubsub.transport.redis_clients import async_client, is_cluster, sync_client

__all__ = ["RedisTransport", "REGISTRY_KEYS", "redis_transport"]

logger = logging.getLogger(__name__)

_FIELD = b"d"
_WRITE_POOL_SIZE = 16
_CONNECT_TIMEOUT = 5.0
_WRITE_TIMEOUT = 10.0
# Appends that fail for want of a connection are tried again for about 1.5 s (on top of
# redis-py's own retries) before the caller is told Redis is unavailable.
_APPEND_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)

# What a Redis command may raise: a cluster client's own errors (no slot served) are not RedisErrors.
_REDIS_ERRORS = (RedisError, RedisClusterException, OSError)

_REGISTRY_MEMORY = 3600.0  # a process silent for an hour leaves the registry

# Liveness registries: sorted sets, member = name, score = last heartbeat (unix seconds).
REGISTRY_KEYS = {"node": "dps:nodes", "topicserver": "dps:topicservers", "leaving": "dps:leaving"}


_EPOCH_KEY = "dps:epoch"
_RING_KEY = "dps:ring"
_GENERATION_ACKS_KEY = "dps:ring:acks"
_LEGACY_SEQUENCES_KEY = "dps:seq"  # one hash of every topic's number, before 0.13: read, never written
_PROPOSE_RING = """
local current = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
if current ~= tonumber(ARGV[1]) then return -1 end
local next = math.max(current, tonumber(ARGV[3])) + 1
redis.call('HSET', KEYS[1], 'generation', next, 'members', ARGV[2])
return next
"""


def redis_transport(url: str, maxlen: int = 100_000, wait: tuple[int, float] = (0, 1.0)) -> RedisTransport:
    """The transport for a Redis URL: one Redis, or a Redis Cluster for ``redis+cluster://``.

    wait: (replicas, seconds) that an append and a batch's numbers wait for (``WAIT``); 0: none."""
    if is_cluster(url):
        from pubsub.transport.redis_cluster import RedisClusterTransport

        return RedisClusterTransport(url, maxlen)
    return RedisTransport(url, maxlen, wait)


def _sequence_key(topic: str) -> str:
    """A topic's last sequence number, in the slot of its history and epoch (any owner finds it)."""
    return f"dps:seq:{{{topic}}}"


def _barrier_key(server: str) -> str:
    return f"dps:barrier:{{{server}}}"


def _history_key(topic: str) -> str:
    return f"dps:hist:{{{topic}}}"


def _history_epoch_key(topic: str) -> str:
    return f"dps:hepoch:{{{topic}}}"


def _fence_key(topic: str) -> str:
    """The newest ring generation that numbered a topic (topicserver/fencing.py)."""
    return f"dps:fence:{{{topic}}}"


def _last_numbered_key(topic: str) -> str:
    """The generation and origin of a topic's last number: a batch made again knows its own."""
    return f"dps:numbered:{{{topic}}}"


def _numbering_keys(topic: str) -> tuple[str, ...]:
    """The keys a numbering script reads and writes, in its KEYS order (redis_scripts.NUMBER)."""
    return (
        _fence_key(topic),
        _sequence_key(topic),
        _history_key(topic),
        _history_epoch_key(topic),
        _last_numbered_key(topic),
    )


def _cursor_key(server: str) -> str:
    return f"dps:cursor:{{{server}}}"


def _holder_key(server: str) -> str:
    """The newest ring generation that read a server's inbox: only it moves the cursor."""
    return f"dps:holder:{{{server}}}"


def _snapshot_key(kind: str, name: str) -> str:
    return f"dps:snapshot:{kind}:{{{name}}}"


class RedisTransport:
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
            socket_connect_timeout=_CONNECT_TIMEOUT,
        )
        # The coalescer has one pipeline in flight at a time, so it gets a connection of its own:
        # the hot path skips the shared pool's wait-for-a-free-connection machinery.
        self._appender = async_client(
            url, max_connections=2, socket_timeout=_WRITE_TIMEOUT, socket_connect_timeout=_CONNECT_TIMEOUT
        )
        self._readers: dict = {}
        self.appends = AppendCoalescer(self._append_pipeline)
        self._sync_clients: list = []
        self._legacy_sequences: bool | None = None  # does the pre-0.13 dps:seq hash exist?

    def _reader(self, stream: str):
        reader = self._readers.get(stream)
        if reader is None:
            reader = self._readers[stream] = async_client(
                self.url, max_connections=1, socket_timeout=None, socket_connect_timeout=_CONNECT_TIMEOUT
            )
        return reader

    async def ping(self) -> None:
        try:
            await self._writer.ping()
        except _REDIS_ERRORS as exc:
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
                    await self._appender.xadd(stream, {_FIELD: data}, maxlen=self.maxlen, approximate=True)
                    return
                async with self._appender.pipeline(transaction=False) as pipe:
                    for stream, data in items:
                        pipe.xadd(stream, {_FIELD: data}, maxlen=self.maxlen, approximate=True)
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
            except _REDIS_ERRORS as exc:
                raise TransportError(f"XADD of {len(items)} entries failed: {exc}") from exc

    async def last_id(self, stream: str) -> str:
        try:
            newest = await self._writer.xrevrange(stream, count=1)
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"XREVRANGE {stream} failed: {exc}") from exc
        return newest[0][0].decode() if newest else FIRST_ID

    async def read(self, stream: str, after: str, count: int, block_ms: int) -> list[tuple[str, bytes]]:
        try:
            reply = await self._reader(stream).xread({stream: after}, count=count, block=block_ms or None)
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"XREAD {stream} failed: {exc}") from exc
        if not reply:
            return []
        out = []
        for entry_id, fields in reply[0][1]:
            data = fields.get(_FIELD)
            out.append((entry_id.decode(), data if data is not None else b""))
        return out

    # Liveness

    async def heartbeat(self, kind: str, name: str) -> None:
        now = time.time()
        try:
            async with self._writer.pipeline(transaction=False) as pipe:
                pipe.zadd(REGISTRY_KEYS[kind], {name: now})
                pipe.zremrangebyscore(REGISTRY_KEYS[kind], "-inf", now - _REGISTRY_MEMORY)
                await pipe.execute()
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"heartbeat of {kind} {name} failed: {exc}") from exc

    def sync_heartbeat(self, kind: str, name: str):
        """A blocking heartbeat on a connection of its own, for a thread (see pubsub/heartbeat.py)."""
        client = sync_client(self.url, socket_timeout=_CONNECT_TIMEOUT, socket_connect_timeout=_CONNECT_TIMEOUT)
        self._sync_clients.append(client)

        def beat() -> None:
            now = time.time()
            with client.pipeline(transaction=False) as pipe:
                pipe.zadd(REGISTRY_KEYS[kind], {name: now})
                pipe.zremrangebyscore(REGISTRY_KEYS[kind], "-inf", now - _REGISTRY_MEMORY)
                pipe.execute()

        return beat

    async def live(self, kind: str, ttl: float) -> dict[str, float]:
        """Names of that kind seen within ttl seconds, with their last heartbeat."""
        try:
            rows = await self._writer.zrangebyscore(REGISTRY_KEYS[kind], time.time() - ttl, "+inf", withscores=True)
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"reading the {kind} registry failed: {exc}") from exc
        return {name.decode(): score for name, score in rows}

    async def forget(self, kind: str, name: str) -> None:
        """Take name out of the registry (a clean shutdown), so nobody waits for its TTL."""
        try:
            await self._writer.zrem(REGISTRY_KEYS[kind], name)
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"unregistering {kind} {name} failed: {exc}") from exc

    # Snapshots for the admin page: one key per process, found through the liveness registry.

    async def put_reply(self, key: str, data: bytes, ttl: float) -> None:
        try:
            async with self._writer.pipeline(transaction=self.SINGLE_KEY_TRANSACTIONS) as pipe:
                pipe.rpush(key, data)
                pipe.pexpire(key, int(ttl * 1000))
                await pipe.execute()
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"answering {key} failed: {exc}") from exc

    async def take_reply(self, key: str, timeout: float) -> bytes | None:
        """BLPOP on a pooled connection: a list emptied by the pop is gone, one never popped expires."""
        try:
            popped = await self._writer.blpop([key], timeout=timeout)
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"waiting for {key} failed: {exc}") from exc
        return popped[1] if popped else None

    async def put_snapshot(self, kind: str, name: str, data: bytes, ttl: float) -> None:
        try:
            await self._writer.set(_snapshot_key(kind, name), data, px=int(ttl * 1000))
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"storing the snapshot of {kind} {name} failed: {exc}") from exc

    async def snapshots(self, kind: str) -> dict[str, bytes]:
        try:
            names = [name.decode() for name in await self._writer.zrange(REGISTRY_KEYS[kind], 0, -1)]
            values = await self._get_many([_snapshot_key(kind, name) for name in names])
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"reading {kind} snapshots failed: {exc}") from exc
        return {name: value for name, value in zip(names, values, strict=True) if value is not None}

    def id_time(self, entry_id: str) -> float | None:
        return int(entry_id.split("-", 1)[0]) / 1000

    # Coordination: ring generations, barriers, sequence numbers and inbox cursors (see topicserver/server.py)

    async def epoch(self) -> str:
        """A random value set once per Redis lifetime: it changes when Redis restarts empty."""
        await self._call("SET", _EPOCH_KEY, secrets.token_hex(8), "NX")
        return (await self._call("GET", _EPOCH_KEY)).decode()

    async def ring_state(self) -> tuple[int, list[str]]:
        generation, members = await self._call("HMGET", _RING_KEY, "generation", "members")
        return int(generation or 0), orjson.loads(members) if members else []

    async def propose_ring(self, generation: int, members: list[str], floor: int = 0) -> int | None:
        """Move the ring from generation to generation + 1 (floor + 1 if higher: past every fence)
        with members; None if someone was first."""
        members_json = orjson.dumps(sorted(members))
        result = await self._call("EVAL", _PROPOSE_RING, 1, _RING_KEY, generation, members_json, floor)
        return None if result < 0 else int(result)

    async def ack_generation(self, name: str, generation: int) -> None:
        await self._call("HSET", _GENERATION_ACKS_KEY, name, generation)

    async def generation_acks(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in (await self._call("HGETALL", _GENERATION_ACKS_KEY)).items()}

    async def ack_barrier(self, server: str, name: str, token: str) -> None:
        await self._call("HSET", _barrier_key(server), name, token)

    async def barrier_acks(self, server: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in (await self._call("HGETALL", _barrier_key(server))).items()}

    async def load_sequences(self, topics: list[str]) -> dict[str, int]:
        try:
            values = await self._get_many([_sequence_key(topic) for topic in topics])
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"reading sequence numbers failed: {exc}") from exc
        found = {topic: int(value) for topic, value in zip(topics, values, strict=True) if value is not None}
        missing = [topic for topic in topics if topic not in found]
        if self._legacy_sequences is None:  # asked once: a Redis without the old hash never gets one
            self._legacy_sequences = bool(await self._call("EXISTS", _LEGACY_SEQUENCES_KEY))
        if missing and self._legacy_sequences:  # numbered before each topic had a key (upgrading keeps them)
            values = await self._call("HMGET", _LEGACY_SEQUENCES_KEY, *missing)
            found.update({t: int(v) for t, v in zip(missing, values, strict=True) if v is not None})
        return found

    async def load_cursor(self, server: str) -> str | None:
        value = await self._call("GET", _cursor_key(server))
        return value.decode() if value else None

    # Fencing (topicserver/fencing.py): checked by scripts next to the keys they guard

    async def number(
        self, generation: int, numberings: list[Numbering], history_size: int, history_ttl: float
    ) -> dict[str, tuple[str, int]]:
        calls = []
        for numbering in numberings:
            topic = numbering.topic
            keys = _numbering_keys(topic)
            expiry = int(history_ttl * 1000) if numbering.renew and history_size else 0
            args = [generation, numbering.first, numbering.last, history_size, expiry, numbering.last_origin]
            for kept in numbering.kept if history_size else ():
                args.extend(kept)
            calls.append((redis_scripts.NUMBER, keys, args))
        try:
            replies = await self._run_scripts(calls)
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"numbering {len(numberings)} topics failed: {exc}") from exc
        return {
            n.topic: (verdict.decode(), int(value)) for n, (verdict, value) in zip(numberings, replies, strict=True)
        }

    async def deliver(self, server: str, generation: int, appends: list[tuple[str, bytes]], cursor: str | None):
        def send(pipe) -> None:
            for stream, data in appends:
                pipe.xadd(stream, {_FIELD: data}, maxlen=self.maxlen, approximate=True)

        advance = (redis_scripts.ADVANCE_CURSOR, (_holder_key(server), _cursor_key(server)), (generation, cursor))
        try:
            moved = await self._in_order(send, advance if cursor is not None else None)
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"delivering a batch of {server} failed: {exc}") from exc
        return None if cursor is None else bool(moved)

    async def commit(self, server, generation, numberings, appends, cursor, history_size, history_ttl):
        """The whole batch in one script (COMMIT): one round trip, and atomic."""
        keys: list[str] = [_holder_key(server), _cursor_key(server)]
        args: list = [generation, cursor, len(numberings), history_size, self.maxlen]
        index = {}
        for number, numbering in enumerate(numberings, 1):
            topic = numbering.topic
            index[topic] = number
            keys += _numbering_keys(topic)
            kept = numbering.kept if history_size else ()
            expiry = int(history_ttl * 1000) if numbering.renew and history_size else 0
            args += (numbering.first, numbering.last, expiry, numbering.last_origin, len(kept))
            for each in kept:
                args.extend(each)
        streams: dict[str, int] = {}
        args.append(len(appends))
        for stream, data, topic in appends:
            if stream not in streams:
                keys.append(stream)
                streams[stream] = len(keys)
            args += (index.get(topic, 0), streams[stream], data)
        try:
            (reply,) = await self._run_scripts([(redis_scripts.COMMIT, keys, args)])
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"committing a batch of {server} failed: {exc}") from exc
        verdicts = {
            numbering.topic: (reply[2 * i + 1].decode(), int(reply[2 * i + 2]))
            for i, numbering in enumerate(numberings)
        }
        moved = reply[0]
        return verdicts, None if moved < 0 else bool(moved)

    async def claim_inbox(self, server: str, generation: int) -> str | None:
        keys = (_holder_key(server), _cursor_key(server))
        try:
            (cursor,) = await self._run_scripts([(redis_scripts.CLAIM_INBOX, keys, (generation,))])
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"claiming the inbox of {server} failed: {exc}") from exc
        return cursor.decode() if cursor else None

    async def claim_topics(self, topics: list[str], generation: int) -> dict[str, dict[str, int]]:
        calls = [(redis_scripts.CLAIM_TOPIC, (_fence_key(t), _history_key(t)), (generation,)) for t in topics]
        try:
            replies = await self._run_scripts(calls)
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"claiming {len(topics)} topics failed: {exc}") from exc
        return {
            topic: {reply[i].decode(): int(reply[i + 1]) for i in range(0, len(reply), 2)}
            for topic, reply in zip(topics, replies, strict=True)
        }

    async def _run_scripts(self, calls) -> list:
        """EVALSHA each (script, keys, args) in one pipeline; a script Redis does not know yet (it
        restarted, or a new cluster member) is loaded and its calls made again (they did nothing)."""
        replies: list = [None] * len(calls)
        pending = list(range(len(calls)))
        for _ in range(3):
            async with self._writer.pipeline(transaction=False) as pipe:
                for index in pending:
                    script, keys, args = calls[index]
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                if self.wait_replicas:
                    pipe.execute_command("WAIT", self.wait_replicas, self.wait_ms)
                results = await pipe.execute(raise_on_error=False)
            if self.wait_replicas:
                replicated = results.pop()
                if isinstance(replicated, int) and replicated < self.wait_replicas:
                    logger.warning("stored numbers reached %d of %d replicas", replicated, self.wait_replicas)
            missing = []
            for index, result in zip(pending, results, strict=True):
                if isinstance(result, NoScriptError):
                    missing.append(index)
                elif isinstance(result, Exception):
                    raise result
                else:
                    replies[index] = result
            if not missing:
                return replies
            for script in {calls[index][0] for index in missing}:
                await self._writer.script_load(script.source)
            pending = missing
        raise TransportError("Redis keeps forgetting DPS's scripts (SCRIPT FLUSH in a loop?)")

    async def history_epochs(self, topics: list[str], ttl: float) -> dict[str, str]:
        """SET NX then GET: a topic keeps its epoch while its history lives, gets a new one after."""
        try:
            async with self._writer.pipeline(transaction=False) as pipe:
                for topic in topics:
                    pipe.set(_history_epoch_key(topic), new_epoch(), nx=True, px=int(ttl * 1000))
                    pipe.get(_history_epoch_key(topic))
                replies = await pipe.execute()
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"reading history epochs failed: {exc}") from exc
        return {topic: replies[2 * i + 1].decode() for i, topic in enumerate(topics)}

    async def history(self, topic: str) -> list[tuple[int, bytes]]:
        try:
            entries = await self._writer.xrange(_history_key(topic))
        except _REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"reading the history of {topic} failed: {exc}") from exc
        return [(int(fields[b"s"]), fields[_FIELD]) for _, fields in entries]

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
        except _REDIS_ERRORS as exc:
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
        except _REDIS_ERRORS:
            pass

    async def close(self) -> None:
        await self.appends.close()
        for client in [self._writer, self._appender, *self._readers.values()]:
            await client.aclose()
        self._readers.clear()
        for client in self._sync_clients:
            client.close()
        self._sync_clients.clear()
