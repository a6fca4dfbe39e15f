"""Real processes for tests: free loopback ports, daphne nodes, and always stopping them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    """Wait until port accepts connections; fail with the child's output if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening:\n{log.read_text()}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on {HOST}:{port} within {timeout}s:\n{log.read_text()}")


class ManagedProcess:
    """A child process with its output in a temp file; stop() terminates, then kills."""

    def __init__(self, args: list[str], env: dict[str, str], name: str, cwd: Path = ROOT):
        self.name = name
        self.log = Path(tempfile.mkstemp(prefix=f"dps-{name}-", suffix=".log")[1])
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        self._log_file.close()
        return self.process.returncode


def dps_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPS_")}
    env["DJANGO_SETTINGS_MODULE"] = "dps_site.settings"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


class RedisServer(ManagedProcess):
    """A private ``redis-server`` on a free loopback port, keeping nothing on disk."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        super().__init__(
            ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"],
            dict(os.environ),
            f"redis-{self.port}",
        )
        wait_for_port(self.port, self.process, self.log)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host=HOST, port=self.port)


class TopicServerProcess(ManagedProcess):
    """``manage.py runtopicserver --name NAME``; ready once it has registered in Redis."""

    def __init__(self, name: str, redis: RedisServer, extra_args: tuple[str, ...] = (), **settings: str):
        self.server_name = name
        launched = time.time()
        super().__init__(
            [sys.executable, "manage.py", "runtopicserver", "--name", name, *extra_args],
            dps_env(**{"DPS_REDIS_URL": redis.url, **settings}),
            f"ts-{name}",
        )
        client = redis.client()
        deadline = time.monotonic() + START_TIMEOUT
        while (client.zscore("dps:topicservers", name) or 0) < launched:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"topic server {name} did not register:\n{self.output()}")
            time.sleep(0.05)
        client.close()


class DaphneNode(ManagedProcess):
    """``daphne dps_site.asgi:application`` on a free loopback port."""

    def __init__(
        self, application: str = "dps_site.asgi:application", daphne_args: tuple[str, ...] = (), **settings: str
    ):
        self.port = free_port()
        super().__init__(
            [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(self.port), *daphne_args, application],
            dps_env(**settings),
            f"daphne-{self.port}",
        )
        wait_for_port(self.port, self.process, self.log)

    def url(self, query: str = "vsn=2.0.0") -> str:
        return f"ws://{HOST}:{self.port}/socket/websocket?{query}"


def prepare_database(path: Path, username: str = "admin", password: str = "admin-pass") -> dict[str, str]:
    """A migrated SQLite file with one superuser; returns the settings that point at it."""
    settings = {"DPS_SQLITE_PATH": str(path)}
    env = dps_env(**settings, DJANGO_SUPERUSER_PASSWORD=password)
    for command in (
        ["migrate", "--noinput"],
        ["createsuperuser", "--noinput", "--username", username, "--email", "admin@example.com"],
    ):
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True)
    return settings
