"""Where DPS keeps what in Redis: every key name, hash-tagged by what it belongs to, so that on a
Redis Cluster a topic's keys share a slot, as do a server's inbox, cursor and holder
(docs/architecture.md has the table)."""

from __future__ import annotations

__all__ = [
    "ENTRY_FIELD",
    "REGISTRY_KEYS",
    "EPOCH_KEY",
    "GENERATION_ACKS_KEY",
    "LEGACY_SEQUENCES_KEY",
    "RING_KEY",
    "barrier_key",
    "cursor_key",
    "fence_key",
    "history_epoch_key",
    "history_key",
    "holder_key",
    "last_numbered_key",
    "numbering_keys",
    "sequence_key",
    "snapshot_key",
]

# Liveness registries: sorted sets, member = name, score = last heartbeat (unix seconds).
ENTRY_FIELD = b"d"  # every stream entry's one field

REGISTRY_KEYS = {"node": "dps:nodes", "topicserver": "dps:topicservers", "leaving": "dps:leaving"}


EPOCH_KEY = "dps:epoch"
RING_KEY = "dps:ring"
GENERATION_ACKS_KEY = "dps:ring:acks"
LEGACY_SEQUENCES_KEY = "dps:seq"  # one hash of every topic's number, before 0.13: read, never written


def sequence_key(topic: str) -> str:
    """A topic's last sequence number, in the slot of its history and epoch (any owner finds it)."""
    return f"dps:seq:{{{topic}}}"


def barrier_key(server: str) -> str:
    return f"dps:barrier:{{{server}}}"


def history_key(topic: str) -> str:
    return f"dps:hist:{{{topic}}}"


def history_epoch_key(topic: str) -> str:
    return f"dps:hepoch:{{{topic}}}"


def fence_key(topic: str) -> str:
    """The newest ring generation that numbered a topic (topicserver/fencing.py)."""
    return f"dps:fence:{{{topic}}}"


def last_numbered_key(topic: str) -> str:
    """The generation and origin of a topic's last number: a batch made again knows its own."""
    return f"dps:numbered:{{{topic}}}"


def numbering_keys(topic: str) -> tuple[str, ...]:
    """The keys a numbering script reads and writes, in its KEYS order (redis_scripts.NUMBER)."""
    return (
        fence_key(topic),
        sequence_key(topic),
        history_key(topic),
        history_epoch_key(topic),
        last_numbered_key(topic),
    )


def cursor_key(server: str) -> str:
    return f"dps:cursor:{{{server}}}"


def holder_key(server: str) -> str:
    """The newest ring generation that read a server's inbox: only it moves the cursor."""
    return f"dps:holder:{{{server}}}"


def snapshot_key(kind: str, name: str) -> str:
    return f"dps:snapshot:{kind}:{{{name}}}"
