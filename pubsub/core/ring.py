"""The consistent hash ring that names each topic's owner.

Every process (websocket nodes, topic servers, the admin page, external tools)
must agree on ``owner(topic)``, so the hash and the virtual-node count are fixed,
documented constants, exactly those of discord/ex_hash_ring (the seed's ring), so a topic has
the same owner in DPS as in any tool built on it:

- HASH: ``md5(key)``, bytes 8-15 read as a little-endian unsigned 64-bit int;
- VIRTUAL_NODES: 512 points per member, hashed from ``"{member}{i}"`` (no separator), i from 0;
- a topic belongs to the first point strictly above ``HASH(topic)`` (wrapping round).

tests/test_ring.py pins this with owners computed by Erlang's own ``erlang:md5``
(tests/erlang/ring.escript).

Adding a member to an n-member ring moves about 1/(n+1) of the topics.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

from pubsub.exceptions import ConfigurationError

__all__ = ["HashRing", "VIRTUAL_NODES", "key_hash"]

VIRTUAL_NODES = 512
_HASH_SPACE = 2**64


def key_hash(key: str) -> int:
    """The ring's hash: md5, bytes 8-15, little-endian unsigned (ex_hash_ring's Hash.of/1)."""
    return int.from_bytes(hashlib.md5(key.encode()).digest()[8:], "little")


class HashRing:
    """An immutable ring over a set of member names; build a new one when members change."""

    def __init__(self, members: Iterable[str], virtual_nodes: int = VIRTUAL_NODES):
        self.members = tuple(sorted(set(members)))
        if not self.members:
            raise ConfigurationError("The hash ring needs at least one topic server (set DPS_TOPIC_SERVERS).")
        if virtual_nodes < 1:
            raise ConfigurationError("virtual_nodes must be at least 1.")
        self.virtual_nodes = virtual_nodes
        points = sorted((key_hash(f"{member}{i}"), member) for member in self.members for i in range(virtual_nodes))
        self._hashes = [h for h, _ in points]
        self._owners = [m for _, m in points]

    def owner(self, topic: str) -> str:
        """The member that owns topic."""
        index = bisect.bisect_right(self._hashes, key_hash(topic))
        return self._owners[index % len(self._owners)]

    def shares(self) -> dict[str, float]:
        """Each member's fraction of the hash space (sums to 1.0)."""
        share = dict.fromkeys(self.members, 0.0)
        previous = self._hashes[-1] - _HASH_SPACE
        for point, member in zip(self._hashes, self._owners, strict=True):
            share[member] += (point - previous) / _HASH_SPACE
            previous = point
        return share

    def __contains__(self, member: str) -> bool:
        return member in self.members

    def __repr__(self) -> str:
        return f"HashRing({list(self.members)!r})"
