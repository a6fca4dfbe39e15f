"""Applies a chaos schedule (``topicserver/localcluster/chaos.py``) to the processes runcluster started.

One fault at a time: print its ``chaos:`` line, do it (SIGSTOP ... SIGCONT; SIGKILL, wait, start again;
SIGTERM, wait for the exit, start again), then wait until the cluster has recovered (every process
runs, every heartbeat is newer than the fault's end, Redis answers, and on the live ring every topic
server is back in the ring and has adopted it), then the next fault's quiet gap. A cluster that does
not recover within RECOVERY_TTLS liveness TTLs ends the chaos (said on one line); the cluster runs on.
The faults are the schedule's, all of them: a slow recovery makes the run longer, never different.
"""

import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import orjson
import redis

from pubsub.transport.redis_clients import sync_client
from pubsub.transport.redis_keys import GENERATION_ACKS_KEY, REGISTRY_KEYS, RING_KEY, snapshot_key

from .chaos import FREEZE, KILL, Fault

RECOVERY_TTLS = 12  # at most this many liveness TTLs (at least MIN_RECOVERY seconds) to recover from a fault
MIN_RECOVERY = 30.0
PROBE_INTERVAL = 0.2
_REDIS_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


class Processes(Protocol):
    """What the runner needs from runcluster."""

    def fault_signal(self, name: str, sig: int) -> None: ...

    def fault_stop(self, name: str, sig: int) -> str:
        """Send sig, wait for the exit (bounded), and say how it ended, e.g. 'exit 0 after 0.4s'."""

    def fault_start(self, name: str) -> int:
        """Start name again with its own command, name and port; its new pid."""

    def fault_on(self, name: str, on: bool) -> None:
        """While on, name's exit is the fault's doing: the watch over the children ignores it."""


class RecoveryProbe:
    """What the cluster still lacks, read from Redis: heartbeats since a moment, and the live ring."""

    def __init__(self, redis_url: str, topic_servers: list[str], nodes: list[str], live_ring: bool):
        self.redis_url = redis_url
        self.topic_servers = topic_servers
        self.nodes = nodes
        self.live_ring = live_ring
        self.generation = 0

    def missing(self, since: float) -> list[str]:
        client = None
        try:
            client = sync_client(self.redis_url, socket_connect_timeout=1, socket_timeout=1)
            lacking = []
            for kind, names in (("topicserver", self.topic_servers), ("node", self.nodes)):
                for name in names:
                    if (client.zscore(REGISTRY_KEYS[kind], name) or 0) < since:
                        lacking.append(f"a heartbeat of {name}")
            if self.live_ring:
                generation, members = client.hmget(RING_KEY, "generation", "members")
                self.generation = int(generation or 0)
                if sorted(orjson.loads(members) if members else []) != sorted(self.topic_servers):
                    lacking.append(f"a ring of {','.join(self.topic_servers)}")
                else:
                    acks = {k.decode(): int(v) for k, v in client.hgetall(GENERATION_ACKS_KEY).items()}
                    late = [name for name in self.topic_servers if acks.get(name) != self.generation]
                    for name in self.nodes:  # nodes report the generation they follow in their snapshot
                        snapshot = client.get(snapshot_key("node", name))
                        if not snapshot or orjson.loads(snapshot).get("generation") != self.generation:
                            late.append(name)
                    if late:
                        lacking.append(f"{','.join(late)} adopting ring generation {self.generation}")
            return lacking
        except _REDIS_ERRORS as exc:
            return [f"an answer from Redis ({type(exc).__name__})"]
        finally:
            if client is not None:
                client.close()


class ChaosRunner(threading.Thread):
    def __init__(
        self,
        faults: Iterable[Fault],
        processes: Processes,
        probe: Callable[[float], list[str]],
        ttl: float,
        line: Callable[[str], None],
        say: Callable[[str], None],
    ):
        super().__init__(name="chaos", daemon=True)
        self.faults = faults
        self.processes = processes
        self.probe = probe
        self.recovery_timeout = max(MIN_RECOVERY, RECOVERY_TTLS * ttl)
        self.line = line  # a chaos: line, as it is
        self.say = say  # runcluster's own prefixed lines
        self.stop = threading.Event()
        self.applied = 0

    def run(self) -> None:
        started = time.monotonic()
        recovered = started
        for fault in self.faults:
            begin = recovered + fault.gap
            if self.stop.wait(max(0.0, begin - time.monotonic())):
                return
            self.line(f"chaos: {time.monotonic() - started:.1f}s {fault.describe()}")
            self.applied += 1
            if not self._apply(fault):
                return
            ended = time.time()
            took = self._await_recovery(ended)
            if took is None:
                return
            self.say(f"recovered from {fault.kind} {fault.target} {took:.1f}s after it ended")
            recovered = time.monotonic()
        self.say(
            f"chaos done: {self.applied} faults in {time.monotonic() - started:.1f}s; the cluster runs on, Ctrl-C stops"
        )

    def _apply(self, fault: Fault) -> bool:
        """Do fault; False if the cluster began stopping meanwhile (a frozen process is resumed all the same)."""
        name = fault.target
        self.processes.fault_on(name, True)
        try:
            if fault.kind == FREEZE:
                self.processes.fault_signal(name, signal.SIGSTOP)
                try:
                    return not self.stop.wait(fault.hold)
                finally:
                    self.processes.fault_signal(name, signal.SIGCONT)
            if fault.kind == KILL:
                self.say(f"{name}: {self.processes.fault_stop(name, signal.SIGKILL)}")
                if self.stop.wait(fault.hold):
                    return False
            else:
                self.say(f"{name}: {self.processes.fault_stop(name, signal.SIGTERM)}")
                if self.stop.is_set():
                    return False
            self.processes.fault_start(name)
            return True
        finally:
            self.processes.fault_on(name, False)

    def _await_recovery(self, since: float) -> float | None:
        """Seconds until the probe finds nothing missing; None if stopping or not within the timeout."""
        begun = time.monotonic()
        while True:
            lacking = self.probe(since)
            if not lacking:
                return time.monotonic() - begun
            if time.monotonic() - begun > self.recovery_timeout:
                self.say(
                    f"chaos stopped: the cluster did not recover within {self.recovery_timeout:.0f}s "
                    f"(still waiting for {'; '.join(lacking)}); it runs on, Ctrl-C stops"
                )
                return None
            if self.stop.wait(PROBE_INTERVAL):
                return None
