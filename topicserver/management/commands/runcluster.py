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
from urllib.parse import parse_qs, urlparse

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from pubsub.conf import check_redis_url
from pubsub.exceptions import ConfigurationError
from pubsub.layer import NODE_NAME_PATTERN
from pubsub.transport.redis import REGISTRY_KEYS
from pubsub.transport.redis_clients import is_cluster, sync_client

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
STOP_TIMEOUT = 10.0  # seconds each process gets to exit after SIGTERM before it is killed
REDIS_START_TIMEOUT = 10.0
REDIS_CLUSTER_PORT = 7000  # the first member's port with --redis-cluster (Redis' own tutorial's)
NODE_START_TIMEOUT = 30.0
# Stop order: the nodes drain first (their sockets close, they unsubscribe), then the owners, then Redis.
STOP_ORDER = ("node", "topic server", "redis")


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

    def handle(self, *args, redis_url, redis_cluster, redis_cluster_port, topic_servers, nodes, host, ring, **options):
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
        self.children: list[tuple[str, str, subprocess.Popen, threading.Thread]] = []
        self.cleanups: list = []
        self.stopping = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        env = {**os.environ, "DPS_REDIS_URL": redis_url, "DPS_TOPIC_SERVERS": ",".join(servers), "DPS_RING": ring}
        env["PYTHONUNBUFFERED"] = "1"
        try:
            if redis_cluster is not None:
                self._start_redis_cluster(list(ports))
                found = f"a Redis Cluster of {redis_cluster} masters started here; it keeps nothing on disk"
            elif self._redis_answers(redis_url):
                found = "a Redis already answers there"
            else:
                self._start_redis(redis_url)
                found = "started here; it keeps nothing on disk"
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
                listening.close()  # the nodes hold it now
            for name, port in node_ports:
                if port in shared:  # its socket listens already: wait until the node itself is up
                    self._wait_for_node(name, redis_url, launched)
                else:
                    self._wait_for_port(name, host, port)
            if not self.stopping.is_set():
                self._say(f"cluster up: nodes {', '.join(f'{n} ws://{host}:{p}' for n, p in node_ports)}; Ctrl-C stops")
            while not self.stopping.wait(0.2):
                dead = [(name, child.returncode) for _, name, child, _ in self.children if child.poll() is not None]
                if dead:
                    raise CommandError(f"{dead[0][0]} exited with {dead[0][1]}; stopped the cluster")
        finally:
            self._stop_all()
            for cleanup in self.cleanups:
                cleanup()

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
        command = ["redis-server", "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no", *config]
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
        child = subprocess.Popen(
            command,
            env=env,
            pass_fds=fds,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches runcluster only; it stops the children in order
        )
        relay = threading.Thread(target=self._relay, args=(name, child), daemon=True)
        relay.start()
        self.children.append((kind, name, child, relay))
        self._say(f"started {name} (pid {child.pid}): {' '.join(command)}")
        return child

    def _relay(self, name: str, child: subprocess.Popen) -> None:
        for line in iter(child.stdout.readline, b""):
            self.stdout.write(f"[{name:>6}] {line.decode(errors='replace').rstrip()}")
            self.stdout.flush()

    def _stop_all(self) -> None:
        """Each kind in STOP_ORDER: SIGTERM to all of them at once, then wait for each, killing what does
        not exit within STOP_TIMEOUT; report every exit code."""
        for kind in STOP_ORDER:
            group = [(name, child, relay) for k, name, child, relay in self.children if k == kind]
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
