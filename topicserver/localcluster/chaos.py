"""The fault schedule of ``runcluster --chaos SEED``: which fault, on which process, for how long, after
what quiet gap.

A pure function of the seed, the process names and the liveness TTL (the faults are sized in TTLs, so
a freeze always outlives the heartbeat and a small TTL makes a short run): the same inputs give the
same faults, and a run with a longer ``--chaos-duration`` begins with the same faults as a shorter
one. Applying it to processes is ``topicserver/localcluster/chaos_runner.py``'s job.

Each round of three faults is one freeze, one kill and one restart in a shuffled order, so a short
run sees every kind; the target of each is drawn (topic servers most often, then nodes, then Redis).
One fault at a time. ``at`` is the planned start if every recovery were instant; a runner starts each
fault ``gap`` seconds after the cluster has recovered from the previous one, so real times run later.
"""

import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import takewhile

FREEZE, KILL, RESTART = "freeze", "kill", "restart"
KINDS = (FREEZE, KILL, RESTART)

# In liveness TTLs (seconds = TTL times these):
FREEZE_TTLS = (1.5, 3.0)  # SIGSTOP for this long, past the TTL: the others must take over, then take it back
DOWN_TTLS = (0.2, 2.0)  # a killed process stays down this long: back before or after the others notice
GAP_TTLS = (1.0, 2.0)  # quiet time after the cluster has recovered, before the next fault
WARM_UP_TTLS = (2.0, 3.0)  # before the first fault: clients join an intact cluster
MIN_SECONDS = 0.5  # no interval shorter than this, whatever the TTL
# How often each kind of process is the target, when it is a target at all.
WEIGHTS = {"topic server": 4, "node": 3, "redis": 2}


@dataclass(frozen=True)
class Targets:
    """The processes a schedule may hit. Redis is only a target if runcluster started it; it is only
    killed or restarted with ``redis_restart`` (it then keeps an append-only file)."""

    topic_servers: tuple[str, ...]
    nodes: tuple[str, ...]
    redis: tuple[str, ...] = ()
    redis_restart: bool = False

    def kinds(self, group: str) -> tuple[str, ...]:
        if group == "redis" and not self.redis_restart:
            return (FREEZE,)
        return KINDS

    def groups(self) -> dict[str, tuple[str, ...]]:
        every = {"topic server": self.topic_servers, "node": self.nodes, "redis": self.redis}
        return {group: names for group, names in every.items() if names}


@dataclass(frozen=True)
class Fault:
    at: float  # planned start, seconds after the cluster came up, if every recovery were instant
    gap: float  # quiet seconds before it (after the previous fault's recovery)
    kind: str  # FREEZE, KILL or RESTART
    target: str  # a process name: ts-1, ws-a, redis, r7000
    hold: float  # FREEZE: seconds stopped; KILL: seconds down before it is started again; RESTART: 0

    @property
    def ends(self) -> float:
        return self.at + self.hold

    def describe(self) -> str:
        """What the ``chaos:`` line says after its time."""
        if self.kind == FREEZE:
            return f"freeze {self.target} for {self.hold:.1f}s"
        if self.kind == KILL:
            return f"kill -9 {self.target}, restart after {self.hold:.1f}s"
        return f"restart {self.target} (SIGTERM, wait, start)"


def faults(seed: int, targets: Targets, ttl: float) -> Iterator[Fault]:
    """The endless schedule of seed: one fault after another, none overlapping, gaps between."""
    if ttl <= 0:
        raise ValueError(f"the liveness TTL must be positive, not {ttl}")
    groups = targets.groups()
    if not groups:
        raise ValueError("a chaos schedule needs at least one process to hit")
    rng = random.Random(seed)

    def span(ttls: tuple[float, float]) -> float:
        return round(max(MIN_SECONDS, ttl * rng.uniform(*ttls)), 1)

    def rounds() -> Iterator[str]:
        """Every kind once per round, in a shuffled order: a short run sees each of them."""
        while True:
            yield from rng.sample(KINDS, len(KINDS))

    free = 0.0  # when the previous fault ends
    gap = span(WARM_UP_TTLS)
    for kind in rounds():
        names = [group for group in groups if kind in targets.kinds(group)]
        group = rng.choices(names, [WEIGHTS[group] for group in names])[0]
        target = rng.choice(groups[group])
        hold = span(FREEZE_TTLS) if kind == FREEZE else span(DOWN_TTLS) if kind == KILL else 0.0
        at = round(free + gap, 1)
        yield Fault(at=at, gap=gap, kind=kind, target=target, hold=hold)
        free = at + hold
        gap = span(GAP_TTLS)


def schedule(seed: int, targets: Targets, ttl: float, duration: float) -> list[Fault]:
    """The faults of seed that end within duration seconds, as planned."""
    return list(takewhile(lambda fault: fault.ends <= duration, faults(seed, targets, ttl)))
