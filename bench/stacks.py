"""The servers under test, started as real processes on loopback: DPS, stock Channels (two layers), the floor."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

from pubsub.transport.redis_keys import REGISTRY_KEYS
from tests.processes import (
    HOST,
    ROOT,
    START_TIMEOUT,
    DaphneNode,
    ManagedProcess,
    RedisServer,
    TopicServerProcess,
    dps_env,
)

STACKS = ("dps", "stock-pubsub", "stock-core", "floor")


class Stack:
    """redis-server (if the stack needs it), topic servers (DPS) and daphne nodes; stop() ends them all.

    one_port (DPS only): the nodes share one listening socket (``daphne --fd``, as runcluster's
    ``--nodes ws-a:4000,ws-b:4000``) and the kernel spreads the connections over them; urls() is then
    that one port's URL."""

    def __init__(self, name: str, nodes: int = 2, one_port: bool = False):
        self.name = name
        self.redis = RedisServer() if name != "floor" else None
        self.topic_servers = []
        self.nodes: list[DaphneNode | SharedPortNode] = []
        self.listening: socket.socket | None = None
        try:
            if name == "dps":
                settings = {
                    "DPS_REDIS_URL": self.redis.url,
                    "DPS_TOPIC_SERVERS": "ts-1,ts-2",
                    "DPS_LOG_LEVEL": "WARNING",
                }
                settings["DPS_CHANNEL_CAPACITY"] = "100000"
                # The per-socket publish limit is off (0): the end-to-end burst has one publisher sending
                # all its frames back to back (up to 50 now, under the burst of 200, but a bigger burst
                # would be refused), and it measures fan-out; stock has no such limit. Chat clients
                # publish far below 50/s each (at most ~6/s at the top of the quick ladder).
                settings["DPS_PUBLISH_RATE"] = "0"
                self.topic_servers = [TopicServerProcess(n, self.redis, **settings) for n in ("ts-1", "ts-2")]
                if one_port:
                    self.listening = socket.create_server((HOST, 0), backlog=1024)
                    self.listening.set_inheritable(True)
                    launched = time.time()
                    for index in range(nodes):
                        node = SharedPortNode(self.listening, DPS_NODE=f"ws-{index}", **settings)
                        self.nodes.append(node)
                    for node in self.nodes:
                        node.wait_registered(self.redis.url, launched)
                else:
                    for index in range(nodes):
                        self.nodes.append(
                            _quiet_daphne("dps_site.asgi:application", DPS_NODE=f"ws-{index}", **settings)
                        )
            elif name.startswith("stock"):
                layer = name.split("-", 1)[1]
                for _ in range(nodes):
                    self.nodes.append(
                        _quiet_daphne(
                            "bench.stock_app:application", BENCH_STOCK_LAYER=layer, BENCH_REDIS_URL=self.redis.url
                        )
                    )
            elif name == "floor":
                self.nodes.append(_quiet_daphne("bench.floor_app:application"))
            else:
                raise ValueError(f"unknown stack {name!r}; one of {STACKS}")
        except BaseException:
            self.stop()
            raise

    def urls(self) -> list[str]:
        if self.listening is not None:
            return [self.nodes[0].url()]
        return [node.url() for node in self.nodes]

    def connections(self) -> list[int]:
        """Websockets each daphne process holds (how the kernel spread them over a shared port)."""
        return [
            sum(
                1
                for c in psutil.Process(node.process.pid).net_connections("tcp")
                if c.status == "ESTABLISHED" and c.laddr.port == node.port
            )
            for node in self.nodes
        ]

    def daphne_cpu(self) -> float:
        """CPU seconds the daphne processes have used so far."""
        return sum(_cpu(node.process.pid) for node in self.nodes)

    def topic_server_cpu(self) -> float:
        return sum(_cpu(server.process.pid) for server in self.topic_servers)

    def node_rss(self, index: int = 0) -> int:
        return psutil.Process(self.nodes[index].process.pid).memory_info().rss

    def stop(self) -> None:
        for process in [*self.nodes, *self.topic_servers]:
            process.stop()
        if self.listening is not None:
            self.listening.close()
        if self.redis is not None:
            self.redis.stop()


class SharedPortNode(ManagedProcess):
    """A DPS daphne node accepting on a listening socket it shares with others (``daphne --fd``)."""

    def __init__(self, listening: socket.socket, **settings: str):
        self.port = listening.getsockname()[1]
        self.node_name = settings["DPS_NODE"]
        fd = listening.fileno()
        args = [sys.executable, "-m", "daphne", "--fd", str(fd), "-v", "0", "--websocket_timeout", "-1"]
        # ManagedProcess.__init__ passes no descriptors: the same, with the listening one
        self.name = f"daphne-{self.node_name}"
        self.log = Path(tempfile.mkstemp(prefix=f"dps-{self.name}-", suffix=".log")[1])
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            [*args, "dps_site.asgi:application"],
            cwd=ROOT,
            env=dps_env(**settings),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(fd,),
        )

    def wait_registered(self, redis_url: str, launched: float) -> None:
        """Until this node's heartbeat of this run is in Redis: its socket listens before it is up."""
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while (client.zscore(REGISTRY_KEYS["node"], self.node_name) or 0) < launched:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"node {self.node_name} did not start:\n{self.output()}")
                time.sleep(0.05)
        finally:
            client.close()

    def url(self, query: str = "vsn=2.0.0") -> str:
        return f"ws://{HOST}:{self.port}/socket/websocket?{query}"


def _quiet_daphne(application: str, **settings: str) -> DaphneNode:
    # -v 0: no access log line per connection (it would cost the stack under test, not the benchmark)
    return DaphneNode(application, daphne_args=("-v", "0", "--websocket_timeout", "-1"), **settings)


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system
