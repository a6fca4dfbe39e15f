"""The process entry points: runtopicserver, daphne at start, runcluster, docker-compose.yml."""

import asyncio
import importlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands

from tests.processes import HOST, ROOT, ManagedProcess, TopicServerProcess, dps_env, free_port
from tests.test_daphne import seed_session

pytestmark = pytest.mark.processes

UNREACHABLE_REDIS = f"redis://{HOST}:1/0"


def run(args, **settings):
    return subprocess.run(args, cwd=ROOT, env=dps_env(**settings), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args, settings, named",
    [
        (["--name", "ts-9"], {"DPS_TOPIC_SERVERS": "ts-1,ts-2"}, "DPS_TOPIC_SERVERS"),
        (["--name", "ts-1"], {}, "DPS_REDIS_URL"),
        (["--name", "ts-1"], {"DPS_REDIS_URL": UNREACHABLE_REDIS}, "DPS_REDIS_URL"),
        (["--name", "ts-1"], {"DPS_TOPIC_SERVERS": " , "}, "DPS_TOPIC_SERVERS"),
    ],
)
def test_runtopicserver_misconfiguration_stops_at_start(args, settings, named):
    result = run([sys.executable, "manage.py", "runtopicserver", *args], **settings)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"DPS_REDIS_URL": UNREACHABLE_REDIS}, "DPS_REDIS_URL"),
        ({"DPS_NODE": "bad name!"}, "DPS_NODE"),
        ({"DPS_TOPIC_SERVERS": ""}, "DPS_TOPIC_SERVERS"),
        ({"DPS_MAX_CHANNELS": "lots"}, "DPS_MAX_CHANNELS"),
    ],
)
def test_daphne_misconfiguration_stops_at_start(settings, named):
    result = run(
        [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(free_port()), "dps_site.asgi:application"], **settings
    )
    assert result.returncode != 0
    assert named in result.stdout + result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_runtopicserver_stops_cleanly_on_signals(redis_server, sig):
    server = TopicServerProcess("ts-1", redis_server)
    assert server.stop(sig) == 0, server.output()
    assert "topic server ts-1 stopped" in server.output()
    with redis_server.client() as client:
        assert client.zscore("dps:topicservers", "ts-1") is None, "a clean stop unregisters at once"


@pytest.mark.parametrize("ring", ["static", "live"])
async def test_runcluster_runs_the_seed_example_and_stops_everything(ring):
    redis_port, port_a, port_b = free_port(), free_port(), free_port()
    cluster = ManagedProcess(
        [
            sys.executable,
            "manage.py",
            "runcluster",
            "--redis-url",
            f"redis://{HOST}:{redis_port}/0",
            "--nodes",
            f"ws-a:{port_a},ws-b:{port_b}",
            "--ring",
            ring,
        ],
        dps_env(),
        "runcluster",
    )
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while "cluster up" not in cluster.output():
            assert cluster.process.poll() is None, cluster.output()
            assert asyncio.get_running_loop().time() < deadline, cluster.output()
            await asyncio.sleep(0.1)
        url = "ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0"
        await seed_session(url.format(port_a), url.format(port_b))
    finally:
        code = cluster.stop(signal.SIGINT, timeout=30)
    output = cluster.output()
    assert code == 0, output
    pids = [int(line.split("(pid ")[1].split(")")[0]) for line in output.splitlines() if "(pid " in line]
    assert len(pids) == 5, output  # redis, 2 topic servers, 2 nodes
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid
    for line in ("[ws-a]", "[  ts-1]", "[ redis]"):
        assert line.replace("[ws-a]", "[  ws-a]") in output


def test_docker_compose_describes_the_cluster_with_real_entry_points():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "ts-1", "ts-2", "ws-a", "ws-b"} <= services.keys()
    assert (ROOT / "Dockerfile").exists()
    commands = get_commands()
    settings_module = (ROOT / "dps_site" / "settings.py").read_text()
    for name, service in services.items():
        if name == "redis":
            continue
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
