"""What the layer and the topic servers need from a byte-moving backend.

Streams are append-only logs with ids that sort in append order; each has one
reader (a node reads its own stream, a topic server its inbox). Two backends
implement this: Redis streams (a cluster) and in-memory (the embedded default).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Transport",
    "Numbering",
    "commit_in_steps",
    "inbox_stream",
    "node_stream",
    "new_epoch",
    "FIRST_ID",
    "id_order",
    "OK",
    "FENCED",
    "TAKEN",
]

FIRST_ID = "0-0"

# What number() answers for a topic (topicserver/fencing.py explains the rules)
OK = "ok"  # the numbers and the history are stored
FENCED = "fenced"  # a newer ring generation numbers this topic: nothing was written
TAKEN = "taken"  # the first new number is already used (another owner numbered meanwhile): nothing was written


def id_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair (both backends' ids are "<number>-<number>")."""
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def inbox_stream(server: str) -> str:
    """A topic server's inbox; the hash tag lets Redis Cluster place it by server."""
    return f"dps:ts:{{{server}}}"


def node_stream(node: str) -> str:
    """A websocket node's delivery stream."""
    return f"dps:node:{{{node}}}"


@dataclass
class Numbering:
    """What one batch numbers in one topic, stored only if the topic's fence allows it.

    ``first`` is the first number the batch gives (0: it only resends numbers stored before), ``last``
    the highest it sends. ``kept`` goes to the topic's history (the last ``history_size`` messages,
    for ``history_ttl`` seconds); with ``renew`` the history's expiry is renewed too.
    """

    topic: str
    first: int
    last: int
    kept: list[tuple[int, str, bytes]]  # (seq, origin, message)
    renew: bool = False

    @property
    def last_origin(self) -> str:
        """What marks this batch's numbers as its own: the origin of its last new message. An
        attempt whose reply was lost (a timeout, Redis frozen, a failed fan-out) is made again; a
        topic whose last number this generation gave to this origin is this batch's, not taken."""
        return self.kept[-1][1] if self.kept else ""


def new_epoch() -> str:
    """A history's epoch: random, never all digits (it is part of a ref phoenix.js compares)."""
    return "e" + secrets.token_hex(4)


class Transport(Protocol):
    async def append(self, stream: str, data: bytes) -> None:
        """Append one entry; returns once the entry is stored (ordered after every earlier append)."""

    async def append_many(self, items: list[tuple[str, bytes]]) -> None:
        """Append several entries, in order, in one round trip."""

    async def last_id(self, stream: str) -> str:
        """The id of the newest entry, or FIRST_ID; a reader starts after it."""

    async def read(self, stream: str, after: str, count: int, block_ms: int) -> list[tuple[str, bytes]]:
        """Entries after id `after`, oldest first; waits up to block_ms for the first one."""

    async def heartbeat(self, kind: str, name: str) -> None:
        """Record that the process `name` of `kind` ("node" or "topicserver") is alive now."""

    def sync_heartbeat(self, kind: str, name: str):
        """A blocking callable that renews the heartbeat, for a thread; None if the backend has none."""

    async def live(self, kind: str, ttl: float) -> dict[str, float]:
        """Processes of `kind` that sent a heartbeat within ttl seconds: name -> unix time of it."""

    async def forget(self, kind: str, name: str) -> None:
        """Remove a process that stops cleanly from the registry."""

    async def put_snapshot(self, kind: str, name: str, data: bytes, ttl: float) -> None:
        """Publish what a process reports about itself (for the admin page); it expires after ttl."""

    async def snapshots(self, kind: str) -> dict[str, bytes]:
        """The unexpired snapshots of every process of kind."""

    async def put_reply(self, key: str, data: bytes, ttl: float) -> None:
        """Answer a request made with take_reply(key); an answer nobody takes expires after ttl."""

    async def take_reply(self, key: str, timeout: float) -> bytes | None:
        """Wait up to timeout for the answer to key (once); None if none came."""

    def id_time(self, entry_id: str) -> float | None:
        """The unix time an entry was appended, if its id tells (Redis ids do)."""

    # Coordination of owners (failover and handoff; topicserver/server.py explains the protocol)

    async def epoch(self) -> str:
        """Changes when the backend lost its state (Redis restarted empty)."""

    async def ring_state(self) -> tuple[int, list[str]]:
        """The live ring: (generation, members)."""

    async def propose_ring(self, generation: int, members: list[str], floor: int = 0) -> int | None:
        """Compare-and-set the ring to generation + 1 (or floor + 1 if higher); None if the generation
        moved meanwhile."""

    async def ack_generation(self, name: str, generation: int) -> None: ...
    async def generation_acks(self) -> dict[str, int]: ...
    async def ack_barrier(self, server: str, name: str, token: str) -> None: ...
    async def barrier_acks(self, server: str) -> dict[str, str]: ...

    async def load_sequences(self, topics: list[str]) -> dict[str, int]:
        """The last sequence number committed for each topic that has one."""

    async def load_cursor(self, server: str) -> str | None:
        """The id of the last inbox entry whose effects are committed."""

    # Fencing: one numberer per topic, one reader per inbox (topicserver/fencing.py)

    async def number(
        self, generation: int, numberings: list[Numbering], history_size: int, history_ttl: float
    ) -> dict[str, tuple[str, int]]:
        """Per topic, atomically: refuse if its fence is above generation (FENCED, the fence) or if its
        first new number is taken (TAKEN, the last number stored); else raise the fence to generation,
        store the last number and append the kept messages to the history (OK, 0). Numbers this same
        numbering stored before (an attempt whose reply was lost) are OK too, and stored once."""

    async def deliver(
        self, server: str, generation: int, appends: list[tuple[str, bytes]], cursor: str | None
    ) -> bool | None:
        """The appends in order, then server's inbox cursor (None: left as it is), unless a newer
        generation holds that inbox (then the cursor stays and False is returned). A crash leaves a
        prefix of these."""

    async def commit(
        self,
        server: str,
        generation: int,
        numberings: list[Numbering],
        appends: list[tuple[str, bytes, str | None]],
        cursor: str,
        history_size: int,
        history_ttl: float,
    ) -> tuple[dict[str, tuple[str, int]], bool | None]:
        """A batch: number() the numberings; make the appends (stream, data, topic), less those of a
        topic whose numbers were refused; then deliver's cursor, if no topic was refused (else None
        for "not tried"). Returns the verdicts and whether the cursor moved."""

    async def claim_inbox(self, server: str, generation: int) -> str | None:
        """Hold server's inbox at generation (its cursor moves only for that or a newer one); its cursor."""

    async def claim_topics(self, topics: list[str], generation: int) -> dict[str, dict[str, int]]:
        """Raise each topic's fence to generation; per topic, the origin -> seq of its kept history."""

    async def history_epochs(self, topics: list[str], ttl: float) -> dict[str, str]:
        """Each topic's history epoch, made (random) if it has none: new whenever its history was lost."""

    async def history(self, topic: str) -> list[tuple[int, bytes]]:
        """A topic's kept messages, (seq, message) oldest first."""

    async def close(self) -> None:
        """Release connections."""


async def commit_in_steps(
    transport, server, generation, numberings, appends, cursor, history_size, history_ttl
) -> tuple[dict[str, tuple[str, int]], bool | None]:
    """Transport.commit as number() then deliver(): for backends that cannot do it in one step."""
    verdicts = await transport.number(generation, numberings, history_size, history_ttl) if numberings else {}
    refused = {topic for topic, (verdict, _) in verdicts.items() if verdict != OK}
    kept = [(stream, data) for stream, data, topic in appends if topic is None or topic not in refused]
    moved = await transport.deliver(server, generation, kept, None if refused else cursor)
    return verdicts, moved
