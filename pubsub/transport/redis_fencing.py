"""Numbering, history and inbox cursors under the fences (topicserver/fencing.py): each through a
script next to the keys it guards (pubsub/transport/redis_scripts.py), one slot per topic."""

from __future__ import annotations

import logging

from redis.exceptions import NoScriptError

from pubsub.exceptions import TransportError
from pubsub.transport import redis_scripts
from pubsub.transport.base import Numbering, new_epoch
from pubsub.transport.redis_clients import REDIS_ERRORS
from pubsub.transport.redis_keys import (
    ENTRY_FIELD,
    cursor_key,
    fence_key,
    history_epoch_key,
    history_key,
    holder_key,
    numbering_keys,
)

logger = logging.getLogger("pubsub.transport.redis")


class RedisFencing:
    """Mixed into RedisTransport."""

    async def number(
        self, generation: int, numberings: list[Numbering], history_size: int, history_ttl: float
    ) -> dict[str, tuple[str, int]]:
        calls = []
        for numbering in numberings:
            topic = numbering.topic
            keys = numbering_keys(topic)
            expiry = int(history_ttl * 1000) if numbering.renew and history_size else 0
            args = [generation, numbering.first, numbering.last, history_size, expiry, numbering.last_origin]
            for kept in numbering.kept if history_size else ():
                args.extend(kept)
            calls.append((redis_scripts.NUMBER, keys, args))
        try:
            replies = await self._run_scripts(calls)
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"numbering {len(numberings)} topics failed: {exc}") from exc
        return {
            n.topic: (verdict.decode(), int(value)) for n, (verdict, value) in zip(numberings, replies, strict=True)
        }

    async def deliver(self, server: str, generation: int, appends: list[tuple[str, bytes]], cursor: str | None):
        def send(pipe) -> None:
            for stream, data in appends:
                pipe.xadd(stream, {ENTRY_FIELD: data}, maxlen=self.maxlen, approximate=True)

        advance = (redis_scripts.ADVANCE_CURSOR, (holder_key(server), cursor_key(server)), (generation, cursor))
        try:
            moved = await self._in_order(send, advance if cursor is not None else None)
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"delivering a batch of {server} failed: {exc}") from exc
        return None if cursor is None else bool(moved)

    async def commit(self, server, generation, numberings, appends, cursor, history_size, history_ttl):
        """The whole batch in one script (COMMIT): one round trip, and atomic."""
        keys: list[str] = [holder_key(server), cursor_key(server)]
        args: list = [generation, cursor, len(numberings), history_size, self.maxlen]
        index = {}
        for number, numbering in enumerate(numberings, 1):
            topic = numbering.topic
            index[topic] = number
            keys += numbering_keys(topic)
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
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"committing a batch of {server} failed: {exc}") from exc
        verdicts = {
            numbering.topic: (reply[2 * i + 1].decode(), int(reply[2 * i + 2]))
            for i, numbering in enumerate(numberings)
        }
        moved = reply[0]
        return verdicts, None if moved < 0 else bool(moved)

    async def claim_inbox(self, server: str, generation: int) -> str | None:
        keys = (holder_key(server), cursor_key(server))
        try:
            (cursor,) = await self._run_scripts([(redis_scripts.CLAIM_INBOX, keys, (generation,))])
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"claiming the inbox of {server} failed: {exc}") from exc
        return cursor.decode() if cursor else None

    async def claim_topics(self, topics: list[str], generation: int) -> dict[str, dict[str, int]]:
        calls = [(redis_scripts.CLAIM_TOPIC, (fence_key(t), history_key(t)), (generation,)) for t in topics]
        try:
            replies = await self._run_scripts(calls)
        except REDIS_ERRORS as exc:
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
                    pipe.set(history_epoch_key(topic), new_epoch(), nx=True, px=int(ttl * 1000))
                    pipe.get(history_epoch_key(topic))
                replies = await pipe.execute()
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"reading history epochs failed: {exc}") from exc
        return {topic: replies[2 * i + 1].decode() for i, topic in enumerate(topics)}

    async def history(self, topic: str) -> list[tuple[int, bytes]]:
        try:
            entries = await self._writer.xrange(history_key(topic))
        except REDIS_ERRORS as exc:
            await self._drop_connections()
            raise TransportError(f"reading the history of {topic} failed: {exc}") from exc
        return [(int(fields[b"s"]), fields[ENTRY_FIELD]) for _, fields in entries]
