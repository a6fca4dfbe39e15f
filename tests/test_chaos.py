"""``runcluster --chaos SEED``: the schedule as a pure function (tables), and one short real run."""

import asyncio
import re
import sys
from pathlib import Path

import pytest
import redis
from django.core.management import CommandError, call_command

from tests.processes import HOST, ROOT, dps_env, free_port
from tests.test_commands import CLUSTER_START_TIMEOUT, RunCluster, run
from tests.test_daphne import seed_session
from topicserver.localcluster.chaos import (
    DOWN_TTLS,
    FREEZE,
    FREEZE_TTLS,
    GAP_TTLS,
    KILL,
    KINDS,
    RESTART,
    WARM_UP_TTLS,
    Targets,
    faults,
    schedule,
)

TWO_BY_TWO = Targets(("ts-1", "ts-2"), ("ws-a", "ws-b"), ("redis",), redis_restart=True)
SHAPES = [
    TWO_BY_TWO,
    Targets(("ts-1", "ts-2", "ts-3"), ("ws-a", "ws-b")),  # a Redis runcluster did not start: never a target
    Targets(("ts-1",), ("ws-a",), ("redis",)),  # Redis frozen, never killed
    Targets(("ts-1", "ts-2"), ("ws-a", "ws-b"), ("r7000", "r7001", "r7002"), redis_restart=True),
]
SLACK = 0.051  # the times are rounded to 0.1 s


def within(value: float, ttls: tuple[float, float], ttl: float) -> bool:
    return max(0.5, ttl * ttls[0]) - SLACK <= value <= max(0.5, ttl * ttls[1]) + SLACK


# The schedule: a pure function


def test_seed_7_on_two_by_two_with_a_one_second_ttl():
    """Pinned, so a change of the drawing (or of Python's random) shows here, not as a silent new schedule."""
    assert [(f.at, f.describe()) for f in schedule(7, TWO_BY_TWO, 1.0, 12.0)] == [
        (2.3, "freeze ts-1 for 2.0s"),
        (5.4, "kill -9 ws-a, restart after 0.5s"),
        (7.3, "restart ts-2 (SIGTERM, wait, start)"),
        (8.4, "restart ws-a (SIGTERM, wait, start)"),
        (10.0, "freeze ts-1 for 1.6s"),
    ]


@pytest.mark.parametrize("targets", SHAPES)
@pytest.mark.parametrize("ttl", [0.2, 1.0, 5.0])
def test_the_same_seed_gives_the_same_schedule_and_other_seeds_differ(targets, ttl):
    runs = {seed: schedule(seed, targets, ttl, 300.0) for seed in range(20)}
    assert all(schedule(seed, targets, ttl, 300.0) == plan for seed, plan in runs.items())
    assert len({tuple(plan) for plan in runs.values()}) == len(runs), "20 seeds, 20 schedules"
    longer = schedule(3, targets, ttl, 600.0)
    assert longer[: len(runs[3])] == runs[3], "a longer run begins with the shorter one's faults"


@pytest.mark.parametrize("targets", SHAPES)
@pytest.mark.parametrize("ttl", [0.2, 1.0, 5.0])
@pytest.mark.parametrize("seed", [0, 7, 2**40])
def test_faults_never_overlap_and_keep_their_gaps(targets, ttl, seed):
    duration = 400 * ttl
    plan = schedule(seed, targets, ttl, duration)
    assert len(plan) > 20
    assert within(plan[0].gap, WARM_UP_TTLS, ttl) and plan[0].at == plan[0].gap
    for before, fault in zip(plan, plan[1:], strict=False):
        assert within(fault.gap, GAP_TTLS, ttl), fault
        assert abs(fault.at - (before.ends + fault.gap)) < SLACK, (before, fault)
        assert fault.at >= before.ends + max(0.5, GAP_TTLS[0] * ttl) - SLACK, "a quiet gap after each fault"
    for fault in plan:
        assert fault.ends <= duration
        assert {FREEZE: within(fault.hold, FREEZE_TTLS, ttl), KILL: within(fault.hold, DOWN_TTLS, ttl)}.get(
            fault.kind, fault.hold == 0
        ), fault
    freezes = [f.hold for f in plan if f.kind == FREEZE]
    assert min(freezes) > ttl, "a freeze outlives the liveness TTL"


@pytest.mark.parametrize("targets", SHAPES)
def test_every_process_is_hit_and_redis_only_as_allowed(targets):
    plan = schedule(11, targets, 1.0, 2000.0)
    hit = {(f.kind, f.target) for f in plan}
    for name in targets.topic_servers + targets.nodes:
        assert {(kind, name) for kind in KINDS} <= hit, name
    for name in targets.redis:
        kinds = {kind for kind, target in hit if target == name}
        assert kinds == ({FREEZE, KILL, RESTART} if targets.redis_restart else {FREEZE}), name
    assert {target for _, target in hit} == set(targets.topic_servers + targets.nodes + targets.redis)


@pytest.mark.parametrize(
    "targets, ttl, says",
    [(TWO_BY_TWO, 0.0, "TTL must be positive"), (Targets((), ()), 1.0, "at least one process")],
)
def test_a_schedule_it_cannot_make_is_refused(targets, ttl, says):
    with pytest.raises(ValueError, match=says):
        next(faults(1, targets, ttl))


# The command line


@pytest.mark.parametrize(
    "args, says",
    [
        (["--chaos-duration", "20"], "--chaos-duration and --chaos-redis-restart go with --chaos SEED"),
        (["--chaos-redis-restart"], "--chaos-duration and --chaos-redis-restart go with --chaos SEED"),
        (["--chaos", "7", "--chaos-duration", "0"], "--chaos-duration 0: give a number of seconds above 0"),
        (["--chaos", "seven"], "argument --chaos: invalid int value"),
    ],
)
def test_chaos_arguments_that_cannot_work_stop_at_start(args, says):
    """(In this process: the checks come before anything is started.)"""
    with pytest.raises(CommandError) as refused:
        call_command("runcluster", *args)
    assert says in str(refused.value)


@pytest.mark.processes
def test_chaos_redis_restart_refuses_a_redis_it_did_not_start(redis_server):
    result = run([sys.executable, "manage.py", "runcluster", "--redis-url", redis_server.url, "--chaos", "7",
                  "--chaos-redis-restart"])  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "--chaos-redis-restart restarts only a Redis runcluster starts" in result.stderr, result.stderr


# A real run

CHAOS_SEED = 1  # its four faults: a freeze, a kill -9 and a restart of DPS processes, then kill -9 of Redis
CHAOS_TTL = 1.0
CHAOS_SECONDS = 12  # planned; each recovery adds its time (about 20 s in all here)


def state(pid: int) -> str:
    """The process' state letter (R, S, T for stopped, Z), or '' once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return ""


async def until(condition, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


async def watch_freezes(cluster: RunCluster, stopped: list[str]) -> None:
    """As each freeze line appears, see its process stopped (state T) during the freeze."""
    seen = 0
    while True:
        async with cluster._changed:
            await cluster._changed.wait_for(lambda seen=seen: cluster.ended or len(cluster.lines) > seen)
        for line in cluster.lines[seen:]:
            frozen = re.match(r"chaos: [\d.]+s freeze ([\w-]+) for ([\d.]+)s$", line)
            if frozen:
                pid = cluster.pids()[frozen[1]]
                try:
                    await until(lambda pid=pid: state(pid) == "T", float(frozen[2]), "")
                    stopped.append(frozen[1])
                except TimeoutError:
                    pass
        seen = len(cluster.lines)
        if cluster.ended:
            return


@pytest.mark.processes
async def test_runcluster_chaos_hits_each_process_and_the_cluster_serves_afterwards():
    """``runcluster --chaos 1 --chaos-duration 12 --chaos-redis-restart`` with a 1 s TTL: the planned
    faults, each on its process (stopped while frozen; a new pid after a kill or a restart, with exit -9
    or 0), Redis back with what it held, then the seed's example across both nodes and a clean Ctrl-C."""
    redis_port, port_a, port_b = free_port(), free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "manage.py", "runcluster", "--redis-url", f"redis://{HOST}:{redis_port}/0"),
        *(
            "--nodes",
            f"ws-a:{port_a},ws-b:{port_b}",
            "--chaos",
            str(CHAOS_SEED),
            "--chaos-duration",
            str(CHAOS_SECONDS),
        ),
        "--chaos-redis-restart",
        cwd=ROOT,
        env=dps_env(DPS_LIVENESS_TTL=str(CHAOS_TTL)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    cluster = RunCluster(process)
    all_pids: set[int] = set()
    try:
        await cluster.wait_for_line("cluster up", CLUSTER_START_TIMEOUT)
        with redis.Redis(port=redis_port) as client:
            epoch = client.get("dps:epoch")
        stopped: list[str] = []
        watcher = asyncio.ensure_future(watch_freezes(cluster, stopped))
        await cluster.wait_for_line("chaos done: ", CHAOS_SECONDS + 40)
        watcher.cancel()
        url = "ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0"
        await seed_session(url.format(port_a), url.format(port_b))
        with redis.Redis(port=redis_port) as client:
            assert client.get("dps:epoch") == epoch, "Redis came back from its append-only file, not empty"
        all_pids = {int(pid) for pid in re.findall(r"started \S+ \(pid (\d+)\)", cluster.output())}
        code = await cluster.stop(15)
    except BaseException:
        await cluster.kill()
        print(f"runcluster output:\n{cluster.output()}")
        raise
    output = cluster.output()
    print(output)
    assert code == 0, output
    chaos = [line.split("s ", 1)[1] for line in cluster.lines if line.startswith("chaos: ")]
    planned = [fault.describe() for fault in schedule(CHAOS_SEED, TWO_BY_TWO, CHAOS_TTL, CHAOS_SECONDS)]
    assert chaos == planned and len(planned) == 4, output
    assert {line.split()[0] for line in chaos} == {"freeze", "kill", "restart"} and "redis" in " ".join(chaos)
    assert f"chaos done: {len(chaos)} faults" in output
    assert output.count("[   dps] recovered from ") == len(chaos), output
    assert "chaos stopped:" not in output, output
    freezes = [re.match(r"freeze ([\w-]+)", line)[1] for line in chaos if line.startswith("freeze")]
    assert stopped == freezes, f"stopped while frozen: {stopped}, frozen: {freezes}"
    # Every kill and restart: the process exited as the signal says, and started again with a new pid.
    for line in chaos:
        killed = re.match(r"(kill -9|restart) ([\w-]+)", line)
        if killed:
            exited = "-9" if killed[1] == "kill -9" else "0"
            assert re.search(rf"\] {re.escape(killed[2])}: exit {exited} after", output), (line, output)
    starts = re.findall(r"started (\S+) \(pid (\d+)\)", output)
    for name in ("ts-1", "ts-2", "ws-a", "ws-b", "redis"):
        restarts = sum(1 for line in chaos if re.match(rf"(kill -9|restart) {name}\b", line))
        pids = [pid for started, pid in starts if started == name]
        assert len(pids) == len(set(pids)) == 1 + restarts, (name, pids, output)
    for pid in all_pids:  # (what Ctrl-C stopped is gone too: nothing outlives runcluster)
        assert state(pid) in ("", "Z"), (pid, state(pid))
