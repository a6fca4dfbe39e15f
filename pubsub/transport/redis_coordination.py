"""What processes agree on through Redis besides the streams: liveness registries, snapshots for
the admin page, replies to asks, the ring and its generation acks, barriers, the epoch, and the
numbers and cursors a process reads back when it starts (topicserver/ring_generations.py)."""

from __future__ import annotations

import logging
import secrets
import time

import orjson

from pubsub.exceptions import TransportError
from pubsub.transport import redis_scripts
from pubsub.transport.redis_clients import CONNECT_TIMEOUT, REDIS_ERRORS, sync_client
from pubsub.transport.redis_keys import (
    EPOCH_KEY,
    GENERATION_ACKS_KEY,
    LEGACY_SEQUENCES_KEY,
    REGISTRY_KEYS,
    RING_KEY,
    barrier_key,
    cursor_key,
    sequence_key,
    snapshot_key,
)

logger = logging.getLogger("pubsub.transport.redis")

_REGISTRY_MEMORY = 3600.0  # a process silent for an hour leaves the registry


class RedisCoordination:
    """Mixed into RedisTransport."""

    async def heartbeat(self, kind: str, name: str) -> None:
        now = time.time()
        try:
            async with self._writer.pipeline(transaction=False) as pipe:
                pipe.zadd(REGISTRY_KEYS[kind], {name: now})
                pipe.zremrangebyscore(REGISTRY_KEYS[kind], "-inf", now - _REGISTRY_MEMORY)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"heartbeat of {kind} {name} failed: {exc}") from exc

    def sync_heartbeat(self, kind: str, name: str):
        """A blocking heartbeat on a connection of its own, for a thread (see pubsub/core/heartbeat.py)."""
        client = sync_client(self.url, socket_timeout=CONNECT_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT)
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
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"reading the {kind} registry failed: {exc}") from exc
        return {name.decode(): score for name, score in rows}

    async def forget(self, kind: str, name: str) -> None:
        """Take name out of the registry (a clean shutdown), so nobody waits for its TTL."""
        try:
            await self._writer.zrem(REGISTRY_KEYS[kind], name)
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"unregistering {kind} {name} failed: {exc}") from exc

    async def put_reply(self, key: str, data: bytes, ttl: float) -> None:
        try:
            async with self._writer.pipeline(transaction=self.SINGLE_KEY_TRANSACTIONS) as pipe:
                pipe.rpush(key, data)
                pipe.pexpire(key, int(ttl * 1000))
                await pipe.execute()
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"answering {key} failed: {exc}") from exc

    async def take_reply(self, key: str, timeout: float) -> bytes | None:
        """BLPOP on a pooled connection: a list emptied by the pop is gone, one never popped expires."""
        try:
            popped = await self._writer.blpop([key], timeout=timeout)
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"waiting for {key} failed: {exc}") from exc
        return popped[1] if popped else None

    async def put_snapshot(self, kind: str, name: str, data: bytes, ttl: float) -> None:
        try:
            await self._writer.set(snapshot_key(kind, name), data, px=int(ttl * 1000))
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"storing the snapshot of {kind} {name} failed: {exc}") from exc

    async def snapshots(self, kind: str) -> dict[str, bytes]:
        try:
            names = [name.decode() for name in await self._writer.zrange(REGISTRY_KEYS[kind], 0, -1)]
            values = await self._get_many([snapshot_key(kind, name) for name in names])
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"reading {kind} snapshots failed: {exc}") from exc
        return {name: value for name, value in zip(names, values, strict=True) if value is not None}

    async def epoch(self) -> str:
        """A random value set once per Redis lifetime: it changes when Redis restarts empty."""
        await self._call("SET", EPOCH_KEY, secrets.token_hex(8), "NX")
        return (await self._call("GET", EPOCH_KEY)).decode()

    async def ring_state(self) -> tuple[int, list[str]]:
        generation, members = await self._call("HMGET", RING_KEY, "generation", "members")
        return int(generation or 0), orjson.loads(members) if members else []

    async def propose_ring(self, generation: int, members: list[str], floor: int = 0) -> int | None:
        """Move the ring from generation to generation + 1 (floor + 1 if higher: past every fence)
        with members; None if someone was first."""
        members_json = orjson.dumps(sorted(members))
        result = await self._call("EVAL", redis_scripts.PROPOSE_RING, 1, RING_KEY, generation, members_json, floor)
        return None if result < 0 else int(result)

    async def ack_generation(self, name: str, generation: int) -> None:
        await self._call("HSET", GENERATION_ACKS_KEY, name, generation)

    async def generation_acks(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in (await self._call("HGETALL", GENERATION_ACKS_KEY)).items()}

    async def ack_barrier(self, server: str, name: str, token: str) -> None:
        await self._call("HSET", barrier_key(server), name, token)

    async def barrier_acks(self, server: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in (await self._call("HGETALL", barrier_key(server))).items()}

    async def load_sequences(self, topics: list[str]) -> dict[str, int]:
        try:
            values = await self._get_many([sequence_key(topic) for topic in topics])
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"reading sequence numbers failed: {exc}") from exc
        found = {topic: int(value) for topic, value in zip(topics, values, strict=True) if value is not None}
        missing = [topic for topic in topics if topic not in found]
        if self._legacy_sequences is None:  # asked once: a Redis without the old hash never gets one
            self._legacy_sequences = bool(await self._call("EXISTS", LEGACY_SEQUENCES_KEY))
        if missing and self._legacy_sequences:  # numbered before each topic had a key (upgrading keeps them)
            values = await self._call("HMGET", LEGACY_SEQUENCES_KEY, *missing)
            found.update({t: int(v) for t, v in zip(missing, values, strict=True) if v is not None})
        return found

    async def load_cursor(self, server: str) -> str | None:
        value = await self._call("GET", cursor_key(server))
        return value.decode() if value else None
