"""The official phoenix JavaScript client (npm ``phoenix`` 1.8) run by node, for protocol tests."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

PACKAGES = ["phoenix@1.8", "ws@8"]
SCRIPT = Path(__file__).parent / "js" / "phoenix_session.js"
CACHE = Path(os.environ.get("DPS_TEST_NPM_DIR", Path.home() / ".cache" / "dps-tests" / "phoenix-js"))
LINE_TIMEOUT = 20.0


def install() -> Path:
    """npm install the client once into a cached folder; returns its node_modules."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("node and npm are needed for the phoenix client tests (apt-get install nodejs npm)")
    modules = CACHE / "node_modules"
    if not (modules / "phoenix" / "package.json").exists() or not (modules / "ws").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(CACHE), *PACKAGES],
            check=True,
            timeout=300,
        )
    return modules


class PhoenixSession:
    """One node process running tests/js/phoenix_session.js; its stdout is a stream of JSON events."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.events: list[dict] = []

    @classmethod
    async def start(cls, modules: Path, mount: str, topic: str, role: str, count: int) -> PhoenixSession:
        return await cls.run(modules, SCRIPT.name, mount, topic, role, str(count))

    @classmethod
    async def run(cls, modules: Path, script: str, *args: str) -> PhoenixSession:
        """Any script of tests/js/ that prints one JSON event a line."""
        process = await asyncio.create_subprocess_exec(
            "node",
            str(SCRIPT.parent / script),
            *args,
            env={**os.environ, "NODE_PATH": str(modules)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process)

    async def next_event(self) -> dict:
        line = await asyncio.wait_for(self.process.stdout.readline(), LINE_TIMEOUT)
        if not line:
            raise AssertionError(f"phoenix client exited ({await self.process.wait()}) after {self.events}")
        try:
            event = json.loads(line)
        except ValueError:
            raise AssertionError(f"phoenix client printed {line!r} after {self.events}") from None
        self.events.append(event)
        if event["event"] == "failed":
            raise AssertionError(f"phoenix client failed: {event['why']} after {self.events}")
        return event

    async def wait_for(self, name: str) -> dict:
        while True:
            event = await self.next_event()
            if event["event"] == name:
                return event

    async def finish(self) -> list[dict]:
        """Read to the end; the script exits 0 only after leaving cleanly."""
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), LINE_TIMEOUT)
            if not line:
                break
            self.events.append(json.loads(line))
        code = await asyncio.wait_for(self.process.wait(), LINE_TIMEOUT)
        assert code == 0, f"phoenix client exited with {code}: {self.events}"
        return self.events

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
