"""The Redis streams transport on a Redis Cluster (``redis+cluster://``).

Every key names what it belongs to in a hash tag, so a topic server's inbox, cursor and stamps
share one slot, a node's stream has its own, and a topic's sequence number, history and epoch
share the topic's. What is global (the ring and its generation acks, the liveness registries,
the epoch) is a handful of single keys. Nothing needs a cross-slot command; what one Redis does
in one pipeline, a cluster does in ordered steps:

- a batch commit is three round trips (the topics' fenced numbers and history, then the fan-out,
  then the inbox cursor), because a pipeline that spans members runs on each member independently;
  the order is what makes a crash safe (topicserver/fencing.py);
- reads of many keys are pipelined GETs, which the client splits by member.

While slots move (resharding) the client follows ``MOVED``/``ASK``; while a member fails over,
commands fail with ``CLUSTERDOWN``/``TRYAGAIN`` or a connection error and are retried like a
restart of one Redis.
"""

from __future__ import annotations

from redis.exceptions import ClusterDownError, RedisClusterException, TryAgainError

from pubsub.transport.redis import RedisTransport

__all__ = ["RedisClusterTransport"]


class RedisClusterTransport(RedisTransport):
    TRANSIENT_ERRORS = (*RedisTransport.TRANSIENT_ERRORS, ClusterDownError, TryAgainError, RedisClusterException)
    # A MULTI must stay within one member; reply lists are single keys, but the cluster
    # client's transactions are newer than the lower bound we support.
    SINGLE_KEY_TRANSACTIONS = False

    async def _in_order(self, send, script):
        async with self._writer.pipeline() as pipe:
            send(pipe)
            if len(pipe):
                await pipe.execute()
        return (await self._run_scripts([script]))[0]

    async def _get_many(self, keys: list[str]) -> list:
        if not keys:
            return []
        async with self._writer.pipeline() as pipe:
            for key in keys:
                pipe.get(key)
            return await pipe.execute()

    @staticmethod
    async def _drop_idle(client) -> None:
        """The cluster client reconnects and re-learns the slots itself after a failure."""
