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

``--chaos SEED`` injects faults once the cluster is up: a seeded schedule (``topicserver/chaos.py``)
of freezes, kills and restarts of the topic servers, the nodes and the Redis it started, one at a
time, applied by ``topicserver/chaos_runner.py``, each printed as a ``chaos:`` line.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from pubsub.conf import check_redis_url
from pubsub.exceptions import ConfigurationError
from pubsub.layer import NODE_NAME_PATTERN
from pubsub.transport.redis import REGISTRY_KEYS
from pubsub.transport.redis_clients import is_cluster, sync_client
from topicserver.chaos import Targets, faults, schedule
from topicserver.chaos_runner import ChaosRunner, RecoveryProbe

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
STOP_TIMEOUT = 10.0  # seconds each process gets to exit after SIGTERM before it is killed
REDIS_START_TIMEOUT = 10.0
REDIS_CLUSTER_PORT = 7000  # the first member's port with --redis-cluster (Redis' own tutorial's)
NODE_START_TIMEOUT = 30.0
# Stop order: the nodes drain first (their sockets close, they unsubscribe), then the owners, then Redis.
STOP_ORDER = ("node", "topic server", "redis")
# With --chaos-redis-restart: every acknowledged write is in the append-only file before its reply.
REDIS_PERSISTENCE = ["--appendonly", "yes", "--appendfsync", "always"]
CHAOS_STOP_TIMEOUT = STOP_TIMEOUT + 5.0  # the fault under way finishes (a graceful restart waits for an exit)


@dataclass
class Child:
    """A process runcluster started, with what it takes to start it again (chaos)."""

    kind: str
    name: str
    command: list[str]
    env: dict | None
    fds: tuple
    process: subprocess.Popen | None = None
    relay: threading.Thread | None = None


class Command(BaseCommand):
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

    def _member_ok(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as probe:
                return self._cluster_ok(probe)
        except (redis.RedisError, OSError):
            return False

    # What the chaos runner does to the children (topicserver/chaos_runner.py's Processes).

    def _child(self, name: str) -> Child:
        with self.lock:
            return next(child for child in self.children if child.name == name)

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

    @staticmethod
    def _database(url: str) -> str:
        parsed = urlparse(url)
        if parsed.scheme == "unix":
            return parse_qs(parsed.query).get("db", ["0"])[0]
        return parsed.path.strip("/") or "0"

    def _redis_answers(self, url: str) -> bool:
        client = None
        try:
            client = sync_client(url, socket_connect_timeout=1, socket_timeout=1)
            return bool(client.ping())
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError):
            return False
        finally:
            if client is not None:
                client.close()

    def _start_redis_cluster(self, ports: list[int]) -> None:
        """A redis-server in cluster mode on each port, joined by redis-cli; ready once every slot is served."""
        directory = tempfile.mkdtemp(prefix="dps-redis-cluster-")  # their nodes.conf files
        self.cleanups.append(lambda: shutil.rmtree(directory, ignore_errors=True))
        taken = [port for port in ports if self._redis_answers(f"redis://127.0.0.1:{port}/0")]
        if taken:
            raise CommandError(f"a Redis already answers on port {taken}: --redis-cluster starts its own.")
        for port in ports:
            url = f"redis://127.0.0.1:{port}/0"
            config = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf", "--dir", directory]
            config += ["--cluster-port", str(self._free_port())]  # (port + 10000 may not exist)
            self._start_redis(url, config)
        create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports), "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=REDIS_START_TIMEOUT)
        if done.returncode != 0:
            raise CommandError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        with redis.Redis(port=ports[0], socket_timeout=1) as probe:
            while not self._cluster_ok(probe):
                if time.monotonic() > deadline:
                    raise CommandError(f"the Redis Cluster did not serve every slot within {REDIS_START_TIMEOUT:.0f} s")
                time.sleep(0.1)

    @staticmethod
    def _cluster_ok(probe) -> bool:
        try:
            return b"cluster_state:ok" in probe.execute_command("CLUSTER", "INFO")
        except (redis.RedisError, OSError):  # (a member still starting: not yet)
            return False

    def _start_redis(self, url: str, config: tuple | list = ()) -> None:
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        if is_cluster(url):
            raise CommandError(f"no Redis Cluster answers at {url}; --redis-cluster N starts one here.")
        if parsed.scheme != "redis" or host not in ("127.0.0.1", "localhost", "::1"):
            raise CommandError(f"no Redis answers at {url}, and runcluster only starts one on this machine.")
        command = ["redis-server", "--port", str(port), "--bind", host, "--save", ""]
        if not self.persistent:
            command += ["--appendonly", "no"]
        elif not config:  # (a cluster member's config names its directory and its own AOF directory)
            directory = tempfile.mkdtemp(prefix="dps-redis-")
            self.cleanups.append(lambda: shutil.rmtree(directory, ignore_errors=True))
            command += [*REDIS_PERSISTENCE, "--dir", directory]
        else:
            command += [*REDIS_PERSISTENCE, "--appenddirname", f"appendonlydir-{port}"]
        command += config
        try:
            child = self._spawn("redis", "redis" if not config else f"r{port}", command)
        except FileNotFoundError:
            raise CommandError(
                f"no Redis answers at {url}, and redis-server is not on PATH: install Redis, "
                "or pass --redis-url of a running one."
            ) from None
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while not self._redis_answers(url) and not self.stopping.is_set():
            if child.poll() is not None:
                raise CommandError(f"redis-server exited with {child.returncode} (its log is above)")
            if time.monotonic() > deadline:
                raise CommandError(f"redis-server did not answer at {url} within {REDIS_START_TIMEOUT:.0f} s")
            time.sleep(0.1)

    def _wait_for_node(self, name: str, redis_url: str, launched: float) -> None:
        """Until name's heartbeat (one of this run: a Redis that was there may know an older one)."""
        client = sync_client(redis_url, socket_connect_timeout=1, socket_timeout=1)
        deadline = time.monotonic() + NODE_START_TIMEOUT
        try:
            while time.monotonic() < deadline and not self.stopping.is_set():
                if (client.zscore(REGISTRY_KEYS["node"], name) or 0) >= launched:
                    return
                time.sleep(0.1)
        finally:
            client.close()
        if not self.stopping.is_set():
            raise CommandError(f"{name} did not start within {NODE_START_TIMEOUT:.0f} s")

    def _wait_for_port(self, name: str, host: str, port: int) -> None:
        deadline = time.monotonic() + NODE_START_TIMEOUT
        while time.monotonic() < deadline and not self.stopping.is_set():
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        if not self.stopping.is_set():
            raise CommandError(f"{name} did not listen on {host}:{port} within {NODE_START_TIMEOUT:.0f} s")

    @staticmethod
    def _free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    @staticmethod
    def _shared_sockets(host: str, node_ports: list[tuple[str, int]]) -> dict[int, socket.socket]:
        """A listening socket for each port that several nodes name (theirs to accept on)."""
        ports = [port for _, port in node_ports]
        shared = {}
        for port in sorted({port for port in ports if ports.count(port) > 1}):
            try:
                listening = socket.create_server((host, port), backlog=1024, reuse_port=False)
            except OSError as exc:
                raise CommandError(f"cannot listen on {host}:{port}: {exc}") from None
            listening.set_inheritable(True)
            shared[port] = listening
        return shared

    def _spawn(
        self, kind: str, name: str, command: list[str], env: dict | None = None, fds: tuple = ()
    ) -> subprocess.Popen:
        child = Child(kind, name, command, env, fds)
        self._launch(child)
        with self.lock:
            self.children.append(child)
        return child.process

    def _launch(self, child: Child) -> None:
        """Start child's command (again, after a chaos fault: same name, port and arguments)."""
        child.process = subprocess.Popen(
            child.command,
            env=child.env,
            pass_fds=child.fds,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches runcluster only; it stops the children in order
        )
        child.relay = threading.Thread(target=self._relay, args=(child.name, child.process), daemon=True)
        child.relay.start()
        self._say(f"started {child.name} (pid {child.process.pid}): {' '.join(child.command)}")

    def _relay(self, name: str, child: subprocess.Popen) -> None:
        for line in iter(child.stdout.readline, b""):
            self.stdout.write(f"[{name:>6}] {line.decode(errors='replace').rstrip()}")
            self.stdout.flush()

    def _stop_all(self) -> None:
        """Each kind in STOP_ORDER: SIGTERM to all of them at once, then wait for each, killing what does
        not exit within STOP_TIMEOUT; report every exit code."""
        for kind in STOP_ORDER:
            with self.lock:
                group = [(c.name, c.process, c.relay) for c in self.children if c.kind == kind]
            if not group:
                continue
            started = time.monotonic()
            for _, child, _ in group:
                if child.poll() is None:
                    child.terminate()
            deadline = started + STOP_TIMEOUT
            for name, child, relay in group:
                note = ""
                try:
                    child.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                    note = f", killed: still running {STOP_TIMEOUT:.0f} s after SIGTERM"
                relay.join(1.0)  # its last log lines before the report
                self._say(f"stopped {name}: exit {child.returncode} ({time.monotonic() - started:.1f} s{note})")

    def _say(self, text: str) -> None:
        self.stdout.write(f"[{'dps':>6}] {text}")
        self.stdout.flush()

    def _line(self, text: str) -> None:
        """A line as it is (the chaos: lines, for grep)."""
        self.stdout.write(text)
        self.stdout.flush()
