"""The docs page "In your own Django project" (docs/django-project.md), done to a fresh ``startproject``.

The code blocks of that page's first section are applied as written (each names its file and whether
it is appended or replaces the file), so the documented steps are the tested steps.
"""

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets

from tests.processes import ROOT, START_TIMEOUT, ManagedProcess, RedisServer, free_port, wait_for_port
from tests.test_daphne import seed_session

pytestmark = pytest.mark.processes

PAGE = ROOT / "docs" / "django-project.md"
SECTION = "# In your own Django project"
BLOCK = re.compile(r"```python\n# (?P<path>\S+)(?: \((?P<mode>append|replace)\))?\n(?P<code>.*?)```", re.S)


def documented_files() -> list[tuple[str, str, str]]:
    """(path, append|replace|new, code) for each Python block of the page's first section."""
    page = PAGE.read_text()
    section = page[page.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    files = [(m["path"], m["mode"] or "new", m["code"]) for m in BLOCK.finditer(section)]
    assert {path for path, _, _ in files} >= {"mysite/settings.py", "mysite/asgi.py", "chat/channels.py"}, files
    return files


def project_env(**extra: str) -> dict[str, str]:
    """The environment of a project that knows nothing of dps_site."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPS_") and k != "DJANGO_SETTINGS_MODULE"}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("existing")
    run = dict(cwd=root, env=project_env(), check=True, capture_output=True, timeout=60)
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", "."], **run)
    subprocess.run([sys.executable, "manage.py", "startapp", "chat"], **run)
    for path, mode, code in documented_files():
        target = root / path
        if mode == "append":
            target.write_text(target.read_text() + "\n" + code)
        else:
            target.write_text(code)
    check = subprocess.run([sys.executable, "manage.py", "check"], cwd=root, env=project_env(), capture_output=True)
    assert check.returncode == 0, check.stderr.decode()
    return root


def start_daphne(project: Path, **env: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    daphne = ManagedProcess(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "mysite.asgi:application"],
        project_env(**env),
        f"mysite-{port}",
        cwd=project,
    )
    wait_for_port(port, daphne.process, daphne.log)
    return daphne, f"ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0"


@pytest.fixture
def processes():
    started = []
    yield started
    for process in reversed(started):
        process.stop()


async def send(ws, *frame):
    await ws.send(json.dumps(list(frame)))


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def chat_in_a_room(url_ann: str, url_bo: str) -> None:
    """The documented RoomChannel: a refused join, a welcome, a message to everyone in the room."""
    async with websockets.connect(url_ann) as ann, websockets.connect(url_bo) as bo:
        await send(ann, "1", "1", "room:staff", "phx_join", {})
        assert (await recv(ann))[4] == {"status": "error", "response": {"reason": "log in first"}}
        await send(ann, "2", "2", "room:42", "phx_join", {"nick": "ann"})
        assert await recv(ann) == ["2", "2", "room:42", "phx_reply", {"status": "ok", "response": {"welcome": "ann"}}]
        await send(bo, "1", "1", "room:42", "phx_join", {})
        assert (await recv(bo))[4]["response"] == {"welcome": "guest"}
        await send(bo, "1", "2", "room:42", "new_msg", {"body": "hello"})
        frames = [await recv(bo), await recv(bo)]
        assert ["1", "2", "room:42", "phx_reply", {"status": "ok", "response": {}}] in frames
        assert ["1", None, "room:42", "new_msg", {"nick": "guest", "body": "hello"}] in frames
        assert await recv(ann) == ["2", None, "room:42", "new_msg", {"nick": "guest", "body": "hello"}]
        await send(ann, "2", "3", "room:42", "publish", ["event", {}])
        assert (await recv(ann))[4] == {"status": "error", "response": {"reason": "unknown event 'publish'"}}


async def test_one_process_runs_the_seed_example_and_a_channel_class(project, processes):
    daphne, url = start_daphne(project)
    processes.append(daphne)
    await seed_session(url, url)
    await chat_in_a_room(url, url)


async def test_with_redis_it_is_a_cluster_of_its_own_processes(project, processes):
    redis = RedisServer()
    processes.append(redis)
    launched = time.time()
    topic_server = ManagedProcess(
        [sys.executable, "manage.py", "runtopicserver", "--name", "ts-1"],
        project_env(REDIS_URL=redis.url),
        "mysite-ts-1",
        cwd=project,
    )
    processes.append(topic_server)
    client = redis.client()
    deadline = time.monotonic() + START_TIMEOUT
    while (client.zscore("dps:topicservers", "ts-1") or 0) < launched:
        assert topic_server.process.poll() is None and time.monotonic() < deadline, topic_server.output()
        await asyncio.sleep(0.05)
    client.close()
    urls = []
    for node in ("ws-a", "ws-b"):
        daphne, url = start_daphne(project, REDIS_URL=redis.url, DPS_NODE=node)
        processes.append(daphne)
        urls.append(url)
    await seed_session(*urls)
    await chat_in_a_room(*urls)
