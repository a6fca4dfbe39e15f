"""Who owns which topic, and is it healthy: the report behind the admin ownership page.

The data is what topic servers and nodes publish about themselves with every
heartbeat (snapshots, in Redis or in memory); owners are computed by the same
ring code every process uses, so a lookup works for a topic nobody has joined.
``collect`` does the I/O; everything else here is pure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson

from pubsub.core.ring import HashRing

__all__ = ["collect", "build_report", "Report", "TopicRow", "ProcessRow", "rebalance_preview", "SORT_KEYS"]

SORT_KEYS = {
    "topic": "topic",
    "owner": "owner",
    "subscribers": "subscribers",
    "seq": "last seq",
    "per_s": "msgs/s",
    "present": "present: users (clients)",
}


@dataclass
class ProcessRow:
    """One topic server or websocket node, as its last snapshot describes it."""

    kind: str
    name: str
    live: bool
    heartbeat_age: float | None
    uptime: float | None
    topics: int
    per_s: float
    connections: int | None = None
    stats: dict = field(default_factory=dict)
    in_ring: bool = True


@dataclass
class TopicRow:
    topic: str
    owner: str
    subscribers: dict[str, int]
    seq: int | None = None
    per_s: float = 0.0
    reported_by: str | None = None
    present_clients: int = 0
    present_users: int = 0

    @property
    def total(self) -> int:
        return sum(self.subscribers.values())

    @property
    def owner_agrees(self) -> bool:
        """False while the ring and the server that reports the topic disagree (a ring change in flight)."""
        return self.reported_by in (None, self.owner)


@dataclass
class Report:
    ring: HashRing
    servers: list[ProcessRow]
    nodes: list[ProcessRow]
    topics: list[TopicRow]


async def collect(layer) -> tuple[dict[str, dict], dict[str, dict], tuple[int, list[str]]]:
    """The unexpired snapshots (topic servers, nodes) of the cluster the layer belongs to, and the
    live ring (generation, members)."""
    if layer.redis_url is not None:
        from pubsub.transport.factory import redis_transport

        transport = redis_transport(layer.redis_url)  # a reader only: this process does not join as a node
        try:
            return await _read(transport)
        finally:
            await transport.close()
    await layer.start()  # embedded: the data lives in this process
    return await _read(layer.transport)


async def _read(transport):
    servers = {name: orjson.loads(data) for name, data in (await transport.snapshots("topicserver")).items()}
    nodes = {name: orjson.loads(data) for name, data in (await transport.snapshots("node")).items()}
    return servers, nodes, await transport.ring_state()


def build_report(
    ring: HashRing, servers: dict[str, dict], nodes: dict[str, dict], ttl: float, now: float | None = None
) -> Report:
    now = time.time() if now is None else now
    topics: dict[str, TopicRow] = {}
    for name, snapshot in servers.items():
        for topic, info in snapshot.get("topics", {}).items():
            row = topics.setdefault(topic, TopicRow(topic, ring.owner(topic), {}))
            row.seq, row.per_s, row.reported_by = info.get("seq"), info.get("per_s", 0.0), name
            row.present_clients, row.present_users = info.get("present", (0, 0))
    for name, snapshot in nodes.items():
        for topic, members in snapshot.get("topics", {}).items():
            row = topics.setdefault(topic, TopicRow(topic, ring.owner(topic), {}))
            row.subscribers[name] = members
    return Report(
        ring=ring,
        servers=sorted(
            [_process("topicserver", name, servers.get(name), ttl, now) for name in set(ring.members) | set(servers)],
            key=lambda row: row.name,
        ),
        nodes=[_process("node", name, nodes[name], ttl, now) for name in sorted(nodes)],
        topics=list(topics.values()),
    )


def _process(kind: str, name: str, snapshot: dict | None, ttl: float, now: float) -> ProcessRow:
    if snapshot is None:  # a ring member that never reported: down
        return ProcessRow(kind, name, live=False, heartbeat_age=None, uptime=None, topics=0, per_s=0.0)
    age = max(0.0, now - snapshot["at"])
    started = snapshot.get("started_at")
    rate = snapshot.get("published_per_s") if kind == "topicserver" else snapshot.get("deliveries_per_s")
    return ProcessRow(
        kind,
        name,
        live=age <= ttl,
        heartbeat_age=age,
        uptime=now - started if started else None,
        topics=len(snapshot.get("topics", {})),
        per_s=rate or 0.0,
        connections=snapshot.get("connections"),
        stats=snapshot.get("stats", {}),
    )


def sort_topics(rows: list[TopicRow], key: str, descending: bool) -> list[TopicRow]:
    value = {
        "topic": lambda r: r.topic,
        "owner": lambda r: (r.owner, r.topic),
        "subscribers": lambda r: (r.total, r.topic),
        "seq": lambda r: (r.seq or 0, r.topic),
        "per_s": lambda r: (r.per_s, r.topic),
        "present": lambda r: (r.present_users, r.present_clients, r.topic),
    }[key if key in SORT_KEYS else "topic"]
    return sorted(rows, key=value, reverse=descending)


def rebalance_preview(ring: HashRing, topics: list[str], joining: str) -> list[dict]:
    """For each possible change of one member: how many of the topics would change owner."""
    changes = [(f"{joining} joins", HashRing([*ring.members, joining]))] if joining not in ring else []
    if len(ring.members) > 1:
        changes += [(f"{m} leaves", HashRing([x for x in ring.members if x != m])) for m in ring.members]
    preview = []
    for label, changed in changes:
        moved = sum(1 for topic in topics if ring.owner(topic) != changed.owner(topic))
        preview.append({"change": label, "moved": moved, "share": moved / len(topics) if topics else 0.0})
    return preview
