"""Recovery on the Phoenix wire: a socket that rejoins with its last position gets what it missed.

A join's params opt in: ``"recover": true`` (start counting) or ``"recover": {"epoch": E, "seq": N}``
(the last broadcast this client saw). The reply is always ok, with ``{"epoch", "seq",
"recovered"}``: never an error, which phoenix.js would retry forever. From then on the join's
broadcasts carry the ref ``"<epoch>:<seq>"``, a string with a non-digit, so it can never be taken
for phoenix.js's pending heartbeat ref. Recovery is all or nothing: with the topic's epoch, and
every message after N still kept (at most DPS_RECOVERY_LIMIT), the missed messages follow the
reply in order, then the live ones with no gap and no repeat; otherwise ``recovered`` is false
and nothing is replayed (the client reloads from its own database).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pubsub.core import entries

__all__ = ["Position", "recover_param", "decide", "after_for", "RECOVER_FORMAT"]

RECOVER_FORMAT = 'recover must be true or {"epoch": "...", "seq": N}'
LATEST = 2**62  # "after" that asks the owner for no message, only its epoch and last seq


class Position(NamedTuple):
    epoch: str
    seq: int


def recover_param(params: Any) -> Position | bool | None:
    """None: no recovery asked; True: refs from now on; a Position: recover after it. ValueError if malformed."""
    if not isinstance(params, dict) or "recover" not in params or params["recover"] in (None, False):
        return None
    wanted = params["recover"]
    if wanted is True:
        return True
    if (
        isinstance(wanted, dict)
        and isinstance(wanted.get("epoch"), str)
        and isinstance(wanted.get("seq"), int)
        and not isinstance(wanted.get("seq"), bool)
        and 0 <= wanted["seq"] < LATEST
    ):
        return Position(wanted["epoch"], wanted["seq"])
    raise ValueError(RECOVER_FORMAT)


def decide(position: Position | bool, answer: dict, limit: int) -> tuple[bool, list[tuple[int, dict]]]:
    """(recovered, the missed messages in order) from the owner's history answer."""
    if not isinstance(position, Position) or not answer["epoch"] or position.epoch != answer["epoch"]:
        return False, []
    missed = answer["seq"] - position.seq
    if missed < 0 or missed > limit:
        return False, []
    kept = [(seq, message) for seq, message in answer["messages"] if position.seq < seq <= answer["seq"]]
    if [seq for seq, _ in kept] != list(range(position.seq + 1, answer["seq"] + 1)):
        return False, []  # some of them are no longer kept: all or nothing
    return True, [(seq, entries.unpack_message(message)) for seq, message in kept]


def after_for(position: Position | bool) -> int:
    return position.seq if isinstance(position, Position) else LATEST
