"""runcluster's child processes: starting each with the real command (a shared listening socket
for nodes on one port), relaying its log lines with its name, waiting until it serves, and
stopping them all in order with a bounded wait."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from dataclasses import dataclass

from django.core.management.base import CommandError

from pubsub.transport.redis_clients import sync_client
from pubsub.transport.redis_keys import REGISTRY_KEYS

STOP_TIMEOUT = 10.0  # seconds each process gets to exit after SIGTERM before it is killed
NODE_START_TIMEOUT = 30.0
# Stop order: the nodes drain first (their sockets close, they unsubscribe), then the owners, then Redis.
STOP_ORDER = ("node", "topic server", "redis")


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


class Children:
    """Mixed into runcluster's Command."""

    def _child(self, name: str) -> Child:
        with self.lock:
            return next(child for child in self.children if child.name == name)

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
