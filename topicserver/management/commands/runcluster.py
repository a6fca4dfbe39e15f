"""``manage.py runcluster``: a whole local cluster in one terminal, where the seed needed four.

Starts redis-server if none answers at the Redis URL, then the topic servers and
the daphne nodes as child processes with the real commands, prefixes every log
line with the process name, and stops them all on Ctrl-C or SIGTERM (or when
one of them dies).
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from pubsub.layer import NODE_NAME_PATTERN

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
STOP_TIMEOUT = 10.0


class Command(BaseCommand):
    help = "Run a local DPS cluster: redis-server (if needed), topic servers and daphne nodes, logs prefixed."

    def add_arguments(self, parser):
        parser.add_argument("--redis-url", default=settings.DPS_REDIS_URL or DEFAULT_REDIS_URL)
        parser.add_argument("--topic-servers", default="ts-1,ts-2", help="names, comma-separated")
        parser.add_argument("--nodes", default="ws-a:4000,ws-b:4001", help="name:port pairs, comma-separated")
        parser.add_argument("--host", default="127.0.0.1", help="address the daphne nodes listen on")
        parser.add_argument(
            "--ring", choices=("static", "live"), default=settings.DPS_RING, help="DPS_RING for every process"
        )

    def handle(self, *args, redis_url, topic_servers, nodes, host, ring, **options):
        servers = [name.strip() for name in topic_servers.split(",") if name.strip()]
        node_ports = [self._node(spec) for spec in nodes.split(",") if spec.strip()]
        if not servers or not node_ports:
            raise CommandError("runcluster needs at least one --topic-servers name and one --nodes name:port.")
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        env = {**os.environ, "DPS_REDIS_URL": redis_url, "DPS_TOPIC_SERVERS": ",".join(servers), "DPS_RING": ring}
        env["PYTHONUNBUFFERED"] = "1"
        try:
            if not self._redis_answers(redis_url):
                self._start_redis(redis_url)
            for name in servers:
                self._spawn(name, [sys.executable, "manage.py", "runtopicserver", "--name", name], env)
            for name, port in node_ports:
                command = [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), "--websocket_timeout", "-1"]
                self._spawn(name, [*command, "dps_site.asgi:application"], {**env, "DPS_NODE": name})
            for name, port in node_ports:
                self._wait_for_port(name, host, port)
            self._say(f"cluster up: nodes {', '.join(f'{n} ws://{host}:{p}' for n, p in node_ports)}; Ctrl-C stops")
            while not self.stopping.wait(0.2):
                dead = [(name, child.returncode) for name, child in self.children if child.poll() is not None]
                if dead:
                    raise CommandError(f"{dead[0][0]} exited with {dead[0][1]}; stopping the cluster")
        finally:
            self._stop_all()

    def _node(self, spec: str) -> tuple[str, int]:
        name, _, port = spec.strip().partition(":")
        if not NODE_NAME_PATTERN.match(name) or not port.isdigit():
            raise CommandError(f"--nodes entry {spec!r} must be name:port, e.g. ws-a:4000")
        return name, int(port)

    def _redis_answers(self, url: str) -> bool:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def _start_redis(self, url: str) -> None:
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise CommandError(f"no Redis answers at {url}, and runcluster only starts one on this machine.")
        self._spawn("redis", ["redis-server", "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no"])
        deadline = time.monotonic() + 10
        while not self._redis_answers(url):
            if time.monotonic() > deadline:
                raise CommandError(f"redis-server did not answer at {url} within 10 s")
            time.sleep(0.1)

    def _wait_for_port(self, name: str, host: str, port: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.stopping.is_set():
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        if not self.stopping.is_set():
            raise CommandError(f"{name} did not listen on {host}:{port} within 30 s")

    def _spawn(self, name: str, command: list[str], env: dict | None = None) -> None:
        child = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches runcluster only; it stops the children in order
        )
        self.children.append((name, child))
        threading.Thread(target=self._relay, args=(name, child), daemon=True).start()
        self._say(f"started {name} (pid {child.pid}): {' '.join(command)}")

    def _relay(self, name: str, child: subprocess.Popen) -> None:
        for line in iter(child.stdout.readline, b""):
            self.stdout.write(f"[{name:>6}] {line.decode(errors='replace').rstrip()}")
            self.stdout.flush()

    def _stop_all(self) -> None:
        """Nodes first, then topic servers, then Redis: the reverse of the start order."""
        for name, child in reversed(self.children):
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            self._say(f"stopped {name} ({child.returncode})")

    def _say(self, text: str) -> None:
        self.stdout.write(f"[{'dps':>6}] {text}")
        self.stdout.flush()
