"""``manage.py runcluster``: a whole local cluster in one terminal, where the seed needed four.

Starts redis-server if none answers at the Redis URL (or, with ``--redis-cluster N``, a Redis
Cluster of N masters on ports 7000 and up, built with ``redis-cli --cluster create``), then the topic servers and
the daphne nodes as child processes with the real commands, prefixes every log
line with the process name, and stops them all on Ctrl-C or SIGTERM (or when
one of them dies): the nodes first (they drain), then the topic servers, then
the Redis it started; each group in parallel, each process with a bounded wait.

Several nodes may name the same port (``--nodes ws-a:4000,ws-b:4000``): runcluster then listens
on it once and hands that socket to each of those daphne processes (``daphne --fd``); the kernel
spreads the connections over them: one node process per core, no balancer in front.

``--chaos SEED`` injects faults once the cluster is up: a seeded schedule (``topicserver/localcluster/chaos.py``)
of freezes, kills and restarts of the topic servers, the nodes and the Redis it started, one at a
time, applied by ``topicserver/localcluster/chaos_runner.py``, each printed as a ``chaos:`` line.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from pubsub.conf import check_redis_url
from pubsub.exceptions import ConfigurationError
from pubsub.layer import NODE_NAME_PATTERN
from pubsub.transport.redis_clients import is_cluster
from topicserver.localcluster.chaos import Targets, faults, schedule
from topicserver.localcluster.chaos_runner import ChaosRunner, RecoveryProbe
from topicserver.localcluster.children import NODE_START_TIMEOUT, STOP_TIMEOUT, Child, Children
from topicserver.localcluster.local_redis import LocalRedis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_CLUSTER_PORT = 7000  # the first member's port with --redis-cluster (Redis' own tutorial's)
CHAOS_STOP_TIMEOUT = STOP_TIMEOUT + 5.0  # the fault under way finishes (a graceful restart waits for an exit)


class Command(LocalRedis, Children, BaseCommand):
    help = (
        "Run a local DPS cluster: redis-server (if none answers at --redis-url), topic servers and daphne nodes, "
        "with prefixed logs; Ctrl-C stops them all."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--redis-url",
            default=settings.DPS_REDIS_URL or DEFAULT_REDIS_URL,
            help="the cluster's Redis and database (DPS_REDIS_URL if set); if nothing answers there, "
            "redis-server is started on that port (default: %(default)s)",
        )
        parser.add_argument(
            "--redis-cluster",
            type=int,
            metavar="N",
            help="start a Redis Cluster of N masters (at least 3) on ports "
            "--redis-cluster-port and up, and run on it instead of --redis-url",
        )
        parser.add_argument(
            "--redis-cluster-port",
            type=int,
            default=REDIS_CLUSTER_PORT,
            metavar="PORT",
            help="the first port of --redis-cluster's masters (default: %(default)s)",
        )
        parser.add_argument(
            "--topic-servers", default="ts-1,ts-2", help="topic server names, comma-separated (default: %(default)s)"
        )
        parser.add_argument(
            "--nodes",
            default="ws-a:4000,ws-b:4001",
            help="daphne nodes as name:port pairs, comma-separated; nodes that share a port share its "
            "listening socket (one process per core) (default: %(default)s)",
        )
        parser.add_argument(
            "--host", default="127.0.0.1", help="address the daphne nodes listen on (default: %(default)s)"
        )
        parser.add_argument(
            "--ring",
            choices=("live", "static"),
            default=settings.DPS_RING,
            help="DPS_RING for every process: live follows the running topic servers, with failover; "
            "static (the opt-out) is always --topic-servers (default: %(default)s; DPS_RING sets it)",
        )
        parser.add_argument(
            "--chaos",
            type=int,
            metavar="SEED",
            help="inject faults once the cluster is up: a schedule drawn from SEED freezes (SIGSTOP/SIGCONT), "
            "kills (-9, then starts again) and restarts (SIGTERM, then starts again) the topic servers and "
            "nodes and freezes the Redis runcluster started, one at a time, each printed as a 'chaos:' line; "
            "the same SEED gives the same faults (default: no faults)",
        )
        parser.add_argument(
            "--chaos-duration",
            type=float,
            metavar="S",
            help="only the faults the schedule plans within S seconds (the run takes longer by the time the "
            "cluster takes to recover from each); then the cluster runs on until Ctrl-C (default: faults "
            "until Ctrl-C)",
        )
        parser.add_argument(
            "--chaos-redis-restart",
            action="store_true",
            help="with --chaos, also kill -9 and restart the Redis runcluster started, which then keeps an "
            "append-only file (appendfsync always: every acknowledged write survives) (default: off)",
        )

    def handle(
        self,
        *args,
        redis_url,
        redis_cluster,
        redis_cluster_port,
        topic_servers,
        nodes,
        host,
        ring,
        chaos,
        chaos_duration,
        chaos_redis_restart,
        **options,
    ):
        if chaos is None and (chaos_duration is not None or chaos_redis_restart):
            raise CommandError("--chaos-duration and --chaos-redis-restart go with --chaos SEED.")
        if chaos_duration is not None and chaos_duration <= 0:
            raise CommandError(f"--chaos-duration {chaos_duration:g}: give a number of seconds above 0.")
        self.persistent = chaos_redis_restart
        if redis_cluster is not None:
            if redis_cluster < 3:
                raise CommandError("--redis-cluster needs at least 3 masters (Redis Cluster's own minimum).")
            ports = range(redis_cluster_port, redis_cluster_port + redis_cluster)
            if not 0 < ports[0] <= ports[-1] < 65536:
                raise CommandError(
                    f"--redis-cluster-port {redis_cluster_port}: its {redis_cluster} ports must be 1-65535."
                )
            redis_url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)
        try:
            check_redis_url(redis_url, "--redis-url")
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from None
        servers = [name.strip() for name in topic_servers.split(",") if name.strip()]
        node_ports = [self._node(spec) for spec in nodes.split(",") if spec.strip()]
        if not servers or not node_ports:
            raise CommandError("runcluster needs at least one --topic-servers name and one --nodes name:port.")
        self.children: list[Child] = []
        self.cleanups: list = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # children and faulting: the chaos thread changes them
        self.faulting: set[str] = set()
        runner = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        env = {**os.environ, "DPS_REDIS_URL": redis_url, "DPS_TOPIC_SERVERS": ",".join(servers), "DPS_RING": ring}
        env["PYTHONUNBUFFERED"] = "1"
        try:
            if redis_cluster is not None:
                self._start_redis_cluster(list(ports))
                found = f"a Redis Cluster of {redis_cluster} masters started here; " + (
                    "each keeps an append-only file, fsynced before every reply"
                    if self.persistent
                    else "it keeps nothing on disk"
                )
            elif self._redis_answers(redis_url):
                if chaos_redis_restart:
                    raise CommandError(
                        f"a Redis already answers at {redis_url}: --chaos-redis-restart restarts only a Redis "
                        "runcluster starts (give --redis-url a free port)."
                    )
                found = "a Redis already answers there" + ("; chaos leaves it alone" if chaos is not None else "")
            else:
                self._start_redis(redis_url)
                found = "started here; " + (
                    "it keeps an append-only file, fsynced before every reply"
                    if self.persistent
                    else "it keeps nothing on disk"
                )
            where = "" if is_cluster(redis_url) else f", database {self._database(redis_url)}"
            self._say(f"Redis {redis_url}{where} ({found}); keys dps:*")
            self._say(
                f"ring {ring}: "
                + ("the running topic servers, with failover" if ring == "live" else f"always {','.join(servers)}")
            )
            for name in servers:
                self._spawn("topic server", name, [sys.executable, "manage.py", "runtopicserver", "--name", name], env)
            shared = self._shared_sockets(host, node_ports)
            launched = time.time()
            for name, port in node_ports:
                command = [sys.executable, "-m", "daphne", "--websocket_timeout", "-1"]
                listening = shared.get(port)
                where = ["--fd", str(listening.fileno())] if listening else ["-b", host, "-p", str(port)]
                fds = (listening.fileno(),) if listening else ()
                self._spawn(
                    "node", name, [*command, *where, "dps_site.asgi:application"], {**env, "DPS_NODE": name}, fds
                )
            for listening in shared.values():
                if chaos is None:
                    listening.close()  # the nodes hold it now
                else:  # a node started again takes it over
                    self.cleanups.append(listening.close)
            for name, port in node_ports:
                if port in shared:  # its socket listens already: wait until the node itself is up
                    self._wait_for_node(name, redis_url, launched)
                else:
                    self._wait_for_port(name, host, port)
            if ring == "live" and not self.stopping.is_set():
                self._wait_for_ring(redis_url, servers, [name for name, _ in node_ports], launched)
            if not self.stopping.is_set():
                self._say(f"cluster up: nodes {', '.join(f'{n} ws://{host}:{p}' for n, p in node_ports)}; Ctrl-C stops")
            if chaos is not None and not self.stopping.is_set():
                runner = self._chaos(chaos, chaos_duration, redis_url, servers, node_ports, host, ring)
                runner.start()
            while not self.stopping.wait(0.2):
                with self.lock:
                    dead = [
                        (child.name, child.process.returncode)
                        for child in self.children
                        if child.name not in self.faulting and child.process.poll() is not None
                    ]
                if dead:
                    raise CommandError(f"{dead[0][0]} exited with {dead[0][1]}; stopped the cluster")
        finally:
            if runner is not None:
                runner.stop.set()  # a frozen process is resumed before everything stops
                runner.join(CHAOS_STOP_TIMEOUT)
            self._stop_all()
            for cleanup in self.cleanups:
                cleanup()

    def _wait_for_ring(self, redis_url, servers, nodes, launched) -> None:
        """ "cluster up" means settled: one ring of every topic server, adopted by each of them and by
        every node (a client joining while processes still adopt it could meet two owners)."""
        probe = RecoveryProbe(redis_url, servers, nodes, live_ring=True)
        deadline = time.monotonic() + NODE_START_TIMEOUT
        while (lacking := probe.missing(launched)) and not self.stopping.is_set():
            if time.monotonic() > deadline:
                raise CommandError(
                    f"the cluster did not settle within {NODE_START_TIMEOUT:.0f} s: it lacks {'; '.join(lacking)}"
                )
            time.sleep(0.1)

    def _chaos(self, seed, duration, redis_url, servers, node_ports, host, ring) -> ChaosRunner:
        redis_names = tuple(child.name for child in self.children if child.kind == "redis")
        targets = Targets(tuple(servers), tuple(name for name, _ in node_ports), redis_names, self.persistent)
        ttl = settings.DPS_LIVENESS_TTL
        ring_probe = RecoveryProbe(redis_url, servers, [name for name, _ in node_ports], ring == "live")
        own_ports = {name: port for name, port in node_ports if [p for _, p in node_ports].count(port) == 1}
        members = [int(name[1:]) for name in redis_names if name != "redis"]

        def missing(since: float) -> list[str]:
            lacking = [f"r{port} serving every slot" for port in members if not self._member_ok(port)]
            for name, port in own_ports.items():
                try:
                    socket.create_connection((host, port), timeout=0.5).close()
                except OSError:
                    lacking.append(f"{name} listening on {host}:{port}")
            return lacking or ring_probe.missing(since)

        self._say(
            f"chaos seed {seed}: {', '.join(sum(targets.groups().values(), ()))}, liveness TTL {ttl:g}s, "
            + (f"the faults planned in {duration:g}s" if duration is not None else "until Ctrl-C")
        )
        plan = faults(seed, targets, ttl) if duration is None else schedule(seed, targets, ttl, duration)
        return ChaosRunner(plan, self, missing, ttl, self._line, self._say)

    # What the chaos runner does to the children (topicserver/localcluster/chaos_runner.py's Processes).

    def fault_on(self, name: str, on: bool) -> None:
        with self.lock:
            if on:
                self.faulting.add(name)
            else:
                self.faulting.discard(name)

    def fault_signal(self, name: str, sig: int) -> None:
        process = self._child(name).process
        if process.poll() is None:
            process.send_signal(sig)

    def fault_stop(self, name: str, sig: int) -> str:
        child = self._child(name)
        begun = time.monotonic()
        if child.process.poll() is None:
            child.process.send_signal(sig)
        note = ""
        try:
            child.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
            note = f", killed: still running {STOP_TIMEOUT:.0f} s after SIGTERM"
        child.relay.join(1.0)
        return f"exit {child.process.returncode} after {time.monotonic() - begun:.1f}s{note}"

    def fault_start(self, name: str) -> int:
        child = self._child(name)
        with self.lock:
            self._launch(child)
        return child.process.pid

    def _node(self, spec: str) -> tuple[str, int]:
        name, _, port = spec.strip().partition(":")
        if not NODE_NAME_PATTERN.match(name) or not port.isdigit():
            raise CommandError(f"--nodes entry {spec!r} must be name:port, e.g. ws-a:4000")
        return name, int(port)
