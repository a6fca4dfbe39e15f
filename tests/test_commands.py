"""The process entry points: runtopicserver, daphne at start, runcluster, docker-compose.yml."""

import asyncio
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import websockets
import yaml
from django.core.management import get_commands

from tests.processes import HOST, ROOT, RedisClusterServer, RedisServer, TopicServerProcess, dps_env, free_port
from tests.test_daphne import seed_session

pytestmark = pytest.mark.processes

UNREACHABLE_REDIS = f"redis://{HOST}:1/0"
MALFORMED_REDIS_URLS = ["http://127.0.0.1:6379/0", f"redis://{HOST}:port/0", f"redis://{HOST}:6379/zero"]
CLUSTER_START_TIMEOUT = 60
CLUSTER_STOP_WITHIN = 5.0  # seconds from Ctrl-C until runcluster has exited (it used to take ~16 s)


def run(args, **settings):
    return subprocess.run(args, cwd=ROOT, env=dps_env(**settings), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args, settings, named",
    [
        (["--name", "ts-9"], {"DPS_TOPIC_SERVERS": "ts-1,ts-2", "DPS_RING": "static"}, "DPS_TOPIC_SERVERS"),
        (["--name", "ts-1"], {}, "DPS_REDIS_URL"),
        (["--name", "ts-1"], {"DPS_REDIS_URL": UNREACHABLE_REDIS}, "DPS_REDIS_URL"),
        (["--name", "ts-1"], {"DPS_TOPIC_SERVERS": " , "}, "DPS_TOPIC_SERVERS"),
        *((["--name", "ts-1"], {"DPS_REDIS_URL": url}, "DPS_REDIS_URL") for url in MALFORMED_REDIS_URLS),
        *((["--name", "ts-1", "--redis-url", url], {}, "--redis-url") for url in MALFORMED_REDIS_URLS),
    ],
)
def test_runtopicserver_misconfiguration_stops_at_start(args, settings, named):
    result = run([sys.executable, "manage.py", "runtopicserver", *args], **settings)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("how", [{"DPS_REDIS_URL": UNREACHABLE_REDIS}, {"args": ["--redis-url", UNREACHABLE_REDIS]}])
def test_runtopicserver_unreachable_redis_is_one_clear_line(how):
    settings = {k: v for k, v in how.items() if k != "args"}
    result = run([sys.executable, "manage.py", "runtopicserver", "--name", "ts-1", *how.get("args", [])], **settings)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("CommandError: ") and UNREACHABLE_REDIS in result.stderr, result.stderr
    assert "Start Redis there" in result.stderr


@pytest.mark.parametrize("url", MALFORMED_REDIS_URLS)
def test_malformed_redis_url_names_the_setting_and_an_example(url):
    result = run([sys.executable, "-c", "import dps_site.settings"], DPS_REDIS_URL=url)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pubsub.exceptions.ConfigurationError: DPS_REDIS_URL="), result.stderr
    assert "is not a usable Redis URL" in last and "e.g. redis://127.0.0.1:6379/0" in last
    command = run([sys.executable, "manage.py", "runcluster", "--redis-url", url])
    assert command.returncode == 1 and command.stderr.count("\n") == 1, command.stderr
    assert command.stderr.startswith("CommandError: --redis-url=") and "e.g. redis://" in command.stderr


@pytest.mark.parametrize(("name", "kind"), [("DPS_MAX_CHANNELS", "an integer"), ("DPS_IDLE_TIMEOUT", "a number")])
def test_a_number_setting_that_is_not_a_number(name, kind):
    result = run([sys.executable, "-c", "import dps_site.settings"], **{name: "lots"})
    assert f"{name}='lots' is not {kind}; unset it or give {kind}." in result.stderr, result.stderr


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"DPS_REDIS_URL": UNREACHABLE_REDIS}, "DPS_REDIS_URL"),
        ({"DPS_NODE": "bad name!"}, "DPS_NODE"),
        ({"DPS_TOPIC_SERVERS": ""}, "DPS_TOPIC_SERVERS"),
        ({"DPS_MAX_CHANNELS": "lots"}, "DPS_MAX_CHANNELS"),
        *(({"DPS_REDIS_URL": url}, "DPS_REDIS_URL") for url in MALFORMED_REDIS_URLS),
    ],
)
def test_daphne_misconfiguration_stops_at_start(settings, named):
    result = run(
        [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(free_port()), "dps_site.asgi:application"], **settings
    )
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr, "one clear line, not a traceback"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_runtopicserver_stops_cleanly_on_signals(redis_server, sig):
    server = TopicServerProcess("ts-1", redis_server)
    assert server.stop(sig) == 0, server.output()
    assert "topic server ts-1 stopped" in server.output()
    with redis_server.client() as client:
        assert client.zscore("dps:topicservers", "ts-1") is None, "a clean stop unregisters at once"


class RunCluster:
    """``manage.py runcluster`` with its output read as it arrives, so a test awaits lines instead of polling."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.lines: list[str] = []
        self.ended = False
        self._changed = asyncio.Condition()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, *args: str) -> "RunCluster":
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "manage.py", "runcluster", *args),
            cwd=ROOT,
            env=dps_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        return cls(process)

    async def _read(self) -> None:
        async for raw in self.process.stdout:
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        async with self._changed:
            self.ended = True
            self._changed.notify_all()

    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_line(self, text: str, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.ended or any(text in line for line in self.lines))
        except TimeoutError:
            raise AssertionError(f"no {text!r} within {timeout} s:\n{self.output()}") from None
        assert any(text in line for line in self.lines), f"runcluster ended before {text!r}:\n{self.output()}"

    def pids(self) -> dict[str, int]:
        started = (re.search(r"started (\S+) \(pid (\d+)\)", line) for line in self.lines)
        return {match[1]: int(match[2]) for match in started if match}

    async def stop(self, timeout: float) -> int:
        """Ctrl-C; wait for the exit and the end of its output, at most timeout seconds."""
        self.process.send_signal(signal.SIGINT)
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            await self._reader
        return code

    async def kill(self) -> None:
        """After a failure: make sure nothing it started outlives the test."""
        for pid in [self.process.pid, *self.pids().values()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await self.process.wait()
        self._reader.cancel()


@pytest.mark.parametrize("ring", ["static", "live"])
async def test_runcluster_runs_the_seed_example_and_stops_promptly(ring):
    redis_port, port_a, port_b = free_port(), free_port(), free_port()
    redis_url = f"redis://{HOST}:{redis_port}/0"
    cluster = await RunCluster.start(
        "--redis-url", redis_url, "--nodes", f"ws-a:{port_a},ws-b:{port_b}", "--ring", ring
    )
    try:
        await cluster.wait_for_line("cluster up", CLUSTER_START_TIMEOUT)
        url = "ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0"
        await seed_session(url.format(port_a), url.format(port_b))
        interrupted = time.monotonic()
        code = await cluster.stop(CLUSTER_STOP_WITHIN)
        took = time.monotonic() - interrupted
    except BaseException:
        await cluster.kill()
        print(f"runcluster output:\n{cluster.output()}")  # shown with the failure
        raise
    output = cluster.output()
    assert code == 0, output
    print(f"\nruncluster --ring {ring} stopped {took:.2f} s after Ctrl-C")
    assert f"Redis {redis_url}, database 0 (started here" in output
    assert f"ring {ring}: " in output
    pids = cluster.pids()
    assert sorted(pids) == ["redis", "ts-1", "ts-2", "ws-a", "ws-b"], output
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid
    # Every child exited by itself with 0 (none killed), nodes first, then topic servers, then Redis.
    stops = re.findall(r"\[   dps\] stopped (\S+): exit (-?\d+) \(([\d.]+) s\)$", output, re.MULTILINE)
    assert [name for name, _, _ in stops] == ["ws-a", "ws-b", "ts-1", "ts-2", "redis"], output
    assert all(code == "0" for _, code, _ in stops), output
    for line in ("[  ws-a]", "[  ts-1]", "[ redis]"):
        assert line in output
    if ring == "live":
        assert "no other topic server is running; stopping" in output, "the last servers stop at once"


def free_port_run(count: int) -> int:
    """The first of count consecutive free loopback ports (below 55536, as Redis Cluster wants)."""
    import socket

    for _ in range(200):
        first = free_port()
        if first + count > 55536:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind((HOST, port))
        except OSError:
            continue
        return first
    raise AssertionError(f"no {count} consecutive free ports")


async def test_runcluster_starts_a_redis_cluster_and_runs_on_it():
    """``--redis-cluster 3``: three masters joined by redis-cli, every DPS process on them, the seed's
    example across the two nodes, and Ctrl-C stops all of it, the masters last."""
    first, port_a, port_b = free_port_run(3), free_port(), free_port()
    cluster = await RunCluster.start(
        "--redis-cluster", "3", "--redis-cluster-port", str(first), "--nodes", f"ws-a:{port_a},ws-b:{port_b}"
    )
    try:
        await cluster.wait_for_line("cluster up", CLUSTER_START_TIMEOUT)
        url = "ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0"
        await seed_session(url.format(port_a), url.format(port_b))
        with redis.Redis(port=first) as member:
            info = member.execute_command("CLUSTER", "INFO").decode()
            assert "cluster_known_nodes:3" in info and "cluster_size:3" in info, info
        code = await cluster.stop(40)  # (promptness is the plain test's; every group here may take its 10 s)
    except BaseException:
        await cluster.kill()
        print(f"runcluster output:\n{cluster.output()}")
        raise
    output = cluster.output()
    assert code == 0, output
    members = ",".join(f"127.0.0.1:{port}" for port in range(first, first + 3))
    assert f"Redis redis+cluster://{members} (a Redis Cluster of 3 masters started here" in output
    stops = re.findall(r"\[   dps\] stopped (\S+): exit (-?\d+)", output)
    assert [name for name, _ in stops][-3:] == [f"r{port}" for port in range(first, first + 3)], output
    assert all(code == "0" for _, code in stops), output


def test_a_redis_url_of_the_wrong_kind_is_refused_with_the_right_one():
    """A cluster member named redis:// (its first command would get MOVED), and a single Redis named
    redis+cluster://: both stop at start, saying which scheme to use."""
    cluster, single = RedisClusterServer(masters=3), RedisServer()
    try:
        member = cluster.servers[0].port
        for url, says in (
            (f"redis://{HOST}:{member}/0", f"name it redis+cluster://{HOST}:{member}"),
            (f"redis+cluster://{HOST}:{single.port}", "not a Redis Cluster: name it redis://"),
        ):
            for command in (
                [sys.executable, "manage.py", "runtopicserver", "--name", "ts-1"],
                [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(free_port()), "dps_site.asgi:application"],
            ):
                result = run(command, DPS_REDIS_URL=url)
                assert result.returncode != 0 and says in result.stderr, (command, result.stderr[-2000:])
                assert "DPS_REDIS_URL" in result.stderr
    finally:
        cluster.stop()
        single.stop()


@pytest.mark.parametrize("count", ["2", "x"])
def test_runcluster_refuses_a_redis_cluster_too_small(count):
    result = run([sys.executable, "manage.py", "runcluster", "--redis-cluster", count])
    assert result.returncode != 0
    assert "--redis-cluster" in result.stderr, result.stderr


def test_runcluster_refuses_redis_cluster_ports_out_of_range():
    result = run([sys.executable, "manage.py", "runcluster", "--redis-cluster", "3", "--redis-cluster-port", "65534"])
    assert result.returncode != 0
    assert "--redis-cluster-port 65534" in result.stderr, result.stderr


def test_runcluster_help_shows_every_default():
    result = run([sys.executable, "manage.py", "runcluster", "--help"])
    assert result.returncode == 0, result.stderr
    entries = {}  # option -> its help entry, on one line
    for entry in re.split(r"\n(?=  -)", result.stdout.split("options:", 1)[1].strip("\n")):
        words = entry.split()
        entries[words[0].rstrip(",")] = " ".join(words)
    for option, default in [
        ("--redis-url", "redis://127.0.0.1:6379/0"),
        ("--topic-servers", "ts-1,ts-2"),
        ("--nodes", "ws-a:4000,ws-b:4001"),
        ("--host", "127.0.0.1"),
        ("--ring", "live"),
        ("--redis-cluster-port", "7000"),
    ]:
        assert f"(default: {default}" in entries[option], entries[option]
    assert "static (the opt-out)" in entries["--ring"]


def test_docker_compose_describes_the_cluster_with_real_entry_points():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "ts-1", "ts-2", "ws-a", "ws-b"} <= services.keys()
    assert (ROOT / "Dockerfile").exists()
    commands = get_commands()
    settings_module = (ROOT / "dps_site" / "settings.py").read_text()
    dps_services = {name: service for name, service in services.items() if name != "redis"}
    rings = {service["environment"].get("DPS_RING", "live") for service in dps_services.values()}
    assert rings == {"live"}, "every process must agree on the ring, and the live ring is the default"
    for name, service in dps_services.items():
        command = service["command"]
        env = service["environment"]
        for key in env:
            assert f'"{key}"' in settings_module, f"{name}: {key} is not a setting DPS reads"
        ring = env["DPS_TOPIC_SERVERS"].split(",")
        if "runtopicserver" in command:
            assert command[:3] == ["python", "manage.py", "runtopicserver"] and "runtopicserver" in commands
            assert command[command.index("--name") + 1] == name and name in ring
        else:
            assert command[0] == "daphne"
            module, attribute = command[-1].split(":")
            assert module == "dps_site.asgi" and attribute == "application"
            assert importlib.util.find_spec(module) is not None
            assert env["DPS_NODE"] == name


async def test_runcluster_runs_two_node_processes_on_one_port():
    """One node process per core: ws-a and ws-b accept on one listening socket; clients land on both
    and still hear each other (the seed's example across whichever processes took them)."""
    redis_port, port = free_port(), free_port()
    redis_url = f"redis://{HOST}:{redis_port}/0"
    cluster = await RunCluster.start("--redis-url", redis_url, "--nodes", f"ws-a:{port},ws-b:{port}")
    sockets = []
    try:
        await cluster.wait_for_line("cluster up", CLUSTER_START_TIMEOUT)
        client = redis.Redis(host=HOST, port=redis_port)
        # "cluster up" means settled: every node follows the ring generation every topic server acked
        # (a join on a node ahead of an old owner could miss a message, as this test once saw).
        generation = int(client.hget("dps:ring", "generation"))
        acks = {k.decode(): int(v) for k, v in client.hgetall("dps:ring:acks").items()}
        assert acks == {"ts-1": generation, "ts-2": generation}, (generation, acks)
        for name in ("ws-a", "ws-b"):
            assert json.loads(client.get(f"dps:snapshot:node:{{{name}}}"))["generation"] == generation
        url = f"ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0"
        await seed_session(url, url)
        sockets = await asyncio.gather(*(websockets.connect(url) for _ in range(40)))
        deadline = time.monotonic() + 15
        while True:  # each node reports its open connections in its snapshot, about once a second
            counts = {
                name: json.loads(client.get(f"dps:snapshot:node:{{{name}}}") or "{}").get("connections", 0)
                for name in ("ws-a", "ws-b")
            }
            if sum(counts.values()) >= 40:
                break
            assert time.monotonic() < deadline, counts
            await asyncio.sleep(0.2)
        client.close()
        print(f"\n40 sockets on one port: {counts}")
        assert all(count > 0 for count in counts.values()), f"the kernel gave every socket to one process: {counts}"
    except BaseException:
        await cluster.kill()
        print(f"runcluster output:\n{cluster.output()}")
        raise
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    assert await cluster.stop(CLUSTER_STOP_WITHIN) == 0, cluster.output()
