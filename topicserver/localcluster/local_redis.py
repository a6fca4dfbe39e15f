"""runcluster's Redis: use the one that answers at the URL, or start redis-server there (with an
append-only file for --chaos-redis-restart), or build a local Redis Cluster of N masters."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from urllib.parse import parse_qs, urlparse

import redis
from django.core.management.base import CommandError

from pubsub.transport.redis_clients import is_cluster, sync_client

REDIS_START_TIMEOUT = 10.0
# With --chaos-redis-restart: every acknowledged write is in the append-only file before its reply.
REDIS_PERSISTENCE = ["--appendonly", "yes", "--appendfsync", "always"]


class LocalRedis:
    """Mixed into runcluster's Command."""

    def _member_ok(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as probe:
                return self._cluster_ok(probe)
        except (redis.RedisError, OSError):
            return False

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
