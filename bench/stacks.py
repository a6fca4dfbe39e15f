"""The servers under test, started as real processes on loopback: DPS, stock Channels (two layers), the floor."""

from __future__ import annotations

import psutil

from tests.processes import DaphneNode, RedisServer, TopicServerProcess

STACKS = ("dps", "stock-pubsub", "stock-core", "floor")


class Stack:
    """redis-server (if the stack needs it), topic servers (DPS) and daphne nodes; stop() ends them all."""

    def __init__(self, name: str, nodes: int = 2):
        self.name = name
        self.redis = RedisServer() if name != "floor" else None
        self.topic_servers = []
        self.nodes: list[DaphneNode] = []
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
                for index in range(nodes):
                    self.nodes.append(_quiet_daphne("dps_site.asgi:application", DPS_NODE=f"ws-{index}", **settings))
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
        return [node.url() for node in self.nodes]

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
        if self.redis is not None:
            self.redis.stop()


def _quiet_daphne(application: str, **settings: str) -> DaphneNode:
    # -v 0: no access log line per connection (it would cost the stack under test, not the benchmark)
    return DaphneNode(application, daphne_args=("-v", "0", "--websocket_timeout", "-1"), **settings)


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system
