"""Scenario "chaos": the delivery promise checked through faults, as a user would check it.

``manage.py runcluster --chaos SEED --chaos-redis-restart`` (3 topic servers, 2 nodes, a Redis it
starts, default settings: a 5 s liveness TTL) freezes, kills and restarts its processes and Redis one
at a time, while ``manage.py dpsverify`` joins 100 subscribers on 20 topics over both nodes and
publishes 50/s for as long as the faults are planned and 20 s more; afterwards dpsverify reports what was lost,
duplicated or reordered. Both are shelled out to exactly as docs/failover.md tells users to run them.
Prints the chaos lines as they happen, then dpsverify's table and its last line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

from bench.logs import log
from tests.processes import HOST, ROOT, dps_env, free_port

SEED = int(os.environ.get("BENCH_CHAOS_SEED", "7"))
TOPIC_SERVERS = "ts-1,ts-2,ts-3"
WORKLOAD = ["--topics", "20", "--subscribers", "100", "--rate", "50"]
QUIET_END = 20  # seconds dpsverify publishes on after the planned faults (which run late by their
# recoveries): the last fault is over before it settles, so every subscriber is held to the promise
START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
VERDICT = re.compile(
    r"verify: accepted (\d+), lost (\d+), duplicated (\d+), reordered (\d+), refused (\d+), p99 (\S+) ms"
)


class Cluster:
    """runcluster as a child, its output collected (and its chaos lines logged) as it arrives."""

    def __init__(self, args: list[str]):
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runcluster", *args],
            cwd=ROOT,
            env=dps_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("chaos: ") or line.startswith("[   dps] ") and "chaos" in line:
                log(f"  {line}")
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(
                lambda: any(text in line for line in self.lines) or self.process.poll() is not None, timeout
            ) and any(text in line for line in self.lines)

    def stop(self) -> int:
        """Ctrl-C; runcluster stops what it started. If it hangs: kill it and every process it started."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            started = re.findall(r"started \S+ \(pid (\d+)\)", "\n".join(self.lines))
            for pid in [self.process.pid, *map(int, started)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return self.process.wait()


def run(quick: bool) -> dict:
    seconds = 60 if quick else 120  # of planned faults; dpsverify publishes QUIET_END s longer
    ports = [free_port(), free_port()]
    urls = [f"ws://{HOST}:{port}/socket" for port in ports]
    args = ["--redis-url", f"redis://{HOST}:{free_port()}/0", "--topic-servers", TOPIC_SERVERS]
    args += ["--nodes", f"ws-a:{ports[0]},ws-b:{ports[1]}"]
    args += ["--chaos", str(SEED), "--chaos-duration", str(seconds), "--chaos-redis-restart"]
    log(f"chaos: runcluster --chaos {SEED} for {seconds} s of faults, dpsverify through them")
    cluster = Cluster(args)
    began = time.monotonic()
    try:
        if not cluster.wait_for("cluster up", START_TIMEOUT):
            raise RuntimeError("runcluster did not come up:\n" + "\n".join(cluster.lines[-40:]))
        command = [sys.executable, "manage.py", "dpsverify", *(x for url in urls for x in ("--url", url))]
        command += [*WORKLOAD, "--duration", str(seconds + QUIET_END)]
        log(f"  {' '.join(command[1:])}")
        verify = subprocess.run(command, cwd=ROOT, env=dps_env(), capture_output=True, text=True, timeout=seconds * 4)
        cluster.wait_for("chaos done", 10 * 60)  # the faults planned after dpsverify's end (bounded)
        elapsed = time.monotonic() - began
    finally:
        cluster.stop()
    chaos = [line for line in cluster.lines if line.startswith("chaos: ")]
    unrecovered = [line for line in cluster.lines if "chaos stopped:" in line]
    last = (verify.stdout.strip().splitlines() or [""])[-1]
    verdict = VERDICT.search(last)
    row = {
        "scenario": "chaos",
        "seed": SEED,
        "planned_seconds": seconds,
        "seconds": elapsed,
        "faults": chaos,
        "unrecovered": unrecovered,
        "verify_exit": verify.returncode,
        "verify_output": verify.stdout + (f"\n(stderr)\n{verify.stderr}" if verify.stderr.strip() else ""),
    }
    if verdict:
        keys = ("accepted", "lost", "duplicated", "reordered", "refused")
        row.update({key: int(value) for key, value in zip(keys, verdict.groups(), strict=False)})
        row["p99_ms"] = verdict[6]
    log(f"  {last or 'dpsverify printed nothing'} (exit {verify.returncode})")
    return row


def print_report(rows) -> None:
    for row in [r for r in rows if r["scenario"] == "chaos"]:
        print(f"\n== chaos: runcluster --chaos {row['seed']}, {row['planned_seconds']} s of planned faults ==")
        print(f"   3 topic servers, 2 nodes, Redis with an AOF; {len(row['faults'])} faults in {row['seconds']:.0f} s:")
        for line in row["faults"] + row["unrecovered"]:
            print(f"   {line}")
        print(row["verify_output"].rstrip())
        if "lost" in row:
            print(
                f"   accepted {row['accepted']}, lost {row['lost']}, duplicated {row['duplicated']}, "
                f"reordered {row['reordered']}, refused {row['refused']}, p99 {row['p99_ms']} ms "
                f"(dpsverify exit {row['verify_exit']})"
            )
        else:
            print(f"   dpsverify gave no verdict line (exit {row['verify_exit']})")
