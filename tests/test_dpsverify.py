"""``manage.py dpsverify`` against a real 2-node cluster, as a subprocess, the way a user runs it.

It must catch loss for real: while it runs, the test freezes a node (SIGSTOP), removes some of the
messages waiting in that node's stream, and their copies in the history (else the node fills the
gap from there), and resumes it. Without recovery the node's subscribers never see those messages
and are never told: dpsverify counts each as lost and exits 1. With recovery the node tells them
(phx_error, then recovered: false on their rejoin): dpsverify reports them unrecoverable, lost 0.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from django.core.management import CommandError, call_command

from pubsub.core import entries
from pubsub.transport.base import node_stream
from pubsub.verification.plan import MAX_TOPICS_PER_SOCKET, make_plan, socket_url
from pubsub.verification.sockets import _numbers
from tests.conftest import Cluster
from tests.processes import ROOT, dps_env, free_port

LAST_LINE = re.compile(
    r"^verify: accepted (\d+), lost (\d+), duplicated (\d+), reordered (\d+), refused (\d+), p99 (\d+\.\d|n/a) ms$"
)
RUN_TIMEOUT = 60


@pytest.mark.parametrize(
    "given, address",
    [
        ("ws://127.0.0.1:4000/socket", "ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0"),
        ("ws://127.0.0.1:4000/socket/", "ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0"),
        ("wss://dps.example/socket/websocket", "wss://dps.example/socket/websocket?vsn=2.0.0"),
        ("ws://h:1/socket/websocket?vsn=1.0.0&token=t", "ws://h:1/socket/websocket?token=t&vsn=2.0.0"),
    ],
)
def test_a_socket_endpoint_becomes_its_websocket_address(given, address):
    assert socket_url(given) == address


@pytest.mark.parametrize("given", ["http://127.0.0.1:4000/socket", "ws://", "ws://h:port/socket", "127.0.0.1:4000"])
def test_what_is_no_websocket_url_is_refused(given):
    with pytest.raises(ValueError, match="ws://"):
        socket_url(given)


def test_every_topic_has_subscribers_on_every_url_and_publishers_stay_under_the_socket_rate():
    plan = make_plan(topics=20, subscribers=100, urls=2, rate=50, socket_rate=40)
    assert {(t, url) for t, url in plan.subscribers} == {(t, url) for t in range(20) for url in range(2)}
    assert [url for _, url in plan.subscribers].count(0) == 50
    assert [p.url for p in plan.publishers] == [0, 1] and plan.socket_rate(50) == 25
    routed = [plan.route(k) for k in range(1000)]
    assert {t: [t for t, _ in routed].count(t) for t in range(20)} == dict.fromkeys(range(20), 50)
    assert [p for _, p in routed].count(0) == 500


def test_many_topics_and_a_high_rate_spread_over_sockets_that_join_at_most_100_topics():
    topics, rate = 250, 500
    plan = make_plan(topics=topics, subscribers=topics, urls=3, rate=rate, socket_rate=40)
    assert all(len(p.topics) <= MAX_TOPICS_PER_SOCKET for p in plan.publishers)
    seconds = 10
    sent = [0] * len(plan.publishers)
    for k in range(rate * seconds):
        topic, publisher = plan.route(k)
        assert topic == k % topics and topic in plan.publishers[publisher].topics
        sent[publisher] += 1
    assert max(sent) / seconds <= 40 and plan.socket_rate(rate) <= 40
    assert {p.url for p in plan.publishers} == {0, 1, 2}


def test_a_recovering_broadcast_ref_carries_epoch_and_seq():
    assert [_numbers(ref) for ref in ["e1f:17", "a:b:3", ":4", None, "12", "e:x"]] == [
        ("e1f", 17),
        ("a:b", 3),
        ("", 4),
        (None, None),
        (None, None),
        (None, None),
    ]


@pytest.fixture(scope="module")
def cluster():
    """2 topic servers and 3 nodes over one Redis, default settings; each run uses topics of its own.
    ws-c is the one a test kills."""
    started = Cluster(nodes=("ws-a", "ws-b", "ws-c"))
    yield started
    started.stop()


class Run:
    """``manage.py dpsverify ARGS`` with its output (stdout and stderr) in a file of the test's own."""

    def __init__(self, args, log):
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "dpsverify", *args],
                cwd=ROOT,
                env=dps_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self):
        return self.log.read_text(errors="replace")

    def wait_stopped(self, timeout):
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"dpsverify still running after {timeout}s:\n{self.output()}") from None


@pytest.fixture
def dpsverify(tmp_path):
    """Start dpsverify runs; every one still running is killed at teardown."""
    started = []

    def start(*args):
        started.append(Run(args, tmp_path / f"dpsverify-{len(started)}.log"))
        return started[-1]

    yield start
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
        run.process.wait()


def urls(cluster, *names):
    return [arg for name in names for arg in ("--url", f"ws://127.0.0.1:{cluster.nodes[name].port}/socket")]


def finished(run):
    """(exit code, output lines, the last line's numbers as a dict) once the run has ended."""
    code = run.wait_stopped(RUN_TIMEOUT)
    lines = run.output().splitlines()
    match = LAST_LINE.match(lines[-1]) if lines else None
    assert match, "the last line is not the summary:\n" + run.output()[-3000:]
    names = ["accepted", "lost", "duplicated", "reordered", "refused", "p99"]
    return code, lines, dict(zip(names, [*map(int, match.groups()[:5]), match.group(6)], strict=True))


def total_row(lines):
    """The table's total row, by column heading."""
    heading = next(line for line in lines if line.startswith("topic "))
    total = next(line for line in lines if line.startswith("total "))
    return dict(zip(re.split(r"\s{2,}", heading.strip()), total.split(), strict=True))


def wait_for_output(run, text, timeout=30):
    deadline = time.monotonic() + timeout
    while text not in run.output():
        assert run.process.poll() is None, f"dpsverify ended before {text!r}:\n{run.output()}"
        assert time.monotonic() < deadline, f"no {text!r} from dpsverify within {timeout}s:\n{run.output()}"
        time.sleep(0.02)


def remove_messages_while_frozen(cluster, node, prefix, count=6, timeout=10):
    """Freeze node, wait until count messages of topics starting with prefix wait in its stream
    (after the first of each topic there), delete them there and from their topics' histories,
    resume it; returns how many were removed.

    The first of each topic stays because a node, and a recovering join that started at seq 0,
    only see a gap after a message they received: a topic's first messages lost on their way to a
    node go unnoticed by it (the checker counts them lost either way)."""
    client = cluster.redis.client()
    stream = node_stream(node)
    process = cluster.nodes[node].process
    os.kill(process.pid, signal.SIGSTOP)
    try:
        # A frozen node may still get one more read: the reply to an XREAD it was blocked in. A
        # no-op entry appended now is all that reply can carry; what comes after it waits for us.
        after = client.xadd(stream, {b"d": entries.pack("gdiscard", "dpsverify-test-fence", "nobody")}).decode()
        deadline = time.monotonic() + timeout
        while True:
            waiting, kept = [], set()
            for entry_id, data in client.xrange(stream, min=f"({after}"):
                fields = entries.unpack(data[b"d"], entries.NODE_OPS)
                if fields[0] == "msg" and fields[1].startswith(prefix):
                    if fields[1] in kept:
                        waiting.append((entry_id, fields[1], fields[2]))
                    kept.add(fields[1])  # each topic's first stays: the node numbers the gap after it
            if len(waiting) >= count:
                break
            assert time.monotonic() < deadline, f"only {len(waiting)} messages reached {stream} in {timeout}s"
            time.sleep(0.02)
        removed = waiting[:count]
        assert client.xdel(stream, *[entry_id for entry_id, _, _ in removed]) == count
        for _, topic, seq in removed:
            history = f"dps:hist:{{{topic}}}"
            kept = [entry_id for entry_id, data in client.xrange(history) if int(data[b"s"]) == seq]
            assert kept and client.xdel(history, *kept) == len(kept), f"seq {seq} of {topic} not in its history"
    finally:
        os.kill(process.pid, signal.SIGCONT)
        client.close()
    return count


def wait_for_messages(cluster, node, prefix, count, timeout=10):
    """Until count messages of topics starting with prefix were appended to node's stream."""
    client = cluster.redis.client()
    deadline = time.monotonic() + timeout
    try:
        while True:
            fields = [entries.unpack(data[b"d"], entries.NODE_OPS) for _, data in client.xrange(node_stream(node))]
            seen = sum(1 for f in fields if f[0] == "msg" and f[1].startswith(prefix))
            if seen >= count:
                return
            assert time.monotonic() < deadline, f"{seen} messages of {prefix}* reached {node} in {timeout}s"
            time.sleep(0.02)
    finally:
        client.close()


def run_prefix(run):
    wait_for_output(run, "dpsverify: run ")
    return "verify:" + re.search(r"dpsverify: run ([0-9a-f]+):", run.output()).group(1) + ":"


@pytest.mark.processes
def test_a_healthy_run_passes(cluster, dpsverify):
    run = dpsverify(*urls(cluster, "ws-a", "ws-b"), "--topics", "4", "--subscribers", "8", "--duration", "2")
    code, lines, summary = finished(run)
    print("\n" + "\n".join(lines))
    assert code == 0, run.output()
    assert summary["accepted"] == 100 and summary["refused"] == 0 and summary["p99"] != "n/a"
    row = total_row(lines)
    assert (row["subs"], row["sent"], row["order"], row["dropped"]) == ("8", "100", "seq", "0")
    assert len([line for line in lines if line.startswith("verify:") and not line.startswith("verify: ")]) == 4


@pytest.mark.processes
def test_messages_removed_from_a_node_stream_are_reported_lost(cluster, dpsverify):
    args = ["--topics", "4", "--subscribers", "8", "--rate", "40", "--duration", "2", "--settle", "1"]
    run = dpsverify(*urls(cluster, "ws-a", "ws-b"), *args, "--no-recover")
    prefix = run_prefix(run)
    wait_for_output(run, "dpsverify: publishing")
    removed = remove_messages_while_frozen(cluster, "ws-b", prefix)
    code, lines, summary = finished(run)
    print("\n" + "\n".join(lines))
    assert code == 1, run.output()
    assert summary["lost"] == removed, run.output()
    assert summary["duplicated"] == 0 and summary["reordered"] == 0
    assert total_row(lines)["order"] == "merged"  # plain joins carry no numbers


@pytest.mark.processes
def test_a_loss_the_server_owns_up_to_is_reported_unrecoverable(cluster, dpsverify):
    args = ["--topics", "4", "--subscribers", "8", "--rate", "40", "--duration", "2", "--settle", "3"]
    run = dpsverify(*urls(cluster, "ws-a", "ws-b"), *args)
    prefix = run_prefix(run)
    wait_for_output(run, "dpsverify: publishing")
    remove_messages_while_frozen(cluster, "ws-b", prefix)
    code, lines, summary = finished(run)
    print("\n" + "\n".join(lines))
    row = total_row(lines)
    assert int(row["unrec"]) > 0, run.output()
    assert "recoveries refused" in run.output()
    assert (summary["lost"], summary["duplicated"], summary["reordered"]) == (0, 0, 0), run.output()
    assert code == 0


@pytest.mark.processes
def test_subscribers_of_a_killed_node_reconnect_and_recover(cluster, dpsverify):
    doomed = cluster.nodes["ws-c"]
    args = ["--topics", "4", "--subscribers", "8", "--rate", "40", "--duration", "3", "--settle", "5"]
    run = dpsverify(*urls(cluster, "ws-c", "ws-a"), *args)
    prefix = run_prefix(run)
    wait_for_messages(cluster, "ws-c", prefix, 12)  # delivered there before the kill: recovery starts after them
    doomed.stop(signal.SIGKILL)
    code, lines, summary = finished(run)
    print("\n" + "\n".join(lines))
    assert code == 0, run.output()
    assert re.search(r"subscriber reconnects 4\b.*recovered 4\b", run.output()), run.output()
    assert (summary["lost"], summary["duplicated"], summary["reordered"]) == (0, 0, 0)
    assert total_row(lines)["dropped"] == "0"


@pytest.mark.parametrize(
    "args, says",
    [
        (
            ["--url", "http://127.0.0.1:4000/socket", "--rate", "0"],
            ["is not a websocket URL; give ws://HOST:PORT/socket", "--rate must be more than 0"],
        ),
        (["--url", "ws://127.0.0.1:4000/socket", "--topics", "5", "--subscribers", "4"], ["at least --topics"]),
        (["--url", "ws://127.0.0.1:4000/socket", "--settle", "-1"], ["--settle must be 0 or more"]),
    ],
)
def test_bad_arguments_are_refused_with_exit_code_2(args, says):
    with pytest.raises(CommandError) as refused:
        call_command("dpsverify", *args)
    assert refused.value.returncode == 2 and all(text in str(refused.value) for text in says), refused.value


@pytest.mark.processes
def test_a_missing_url_exits_2():
    done = subprocess.run(
        [sys.executable, "manage.py", "dpsverify"], cwd=ROOT, env=dps_env(), capture_output=True, text=True
    )
    assert done.returncode == 2 and "the following arguments are required: --url" in done.stderr, done.stderr


@pytest.mark.processes
def test_an_unreachable_url_exits_2():
    url = f"ws://127.0.0.1:{free_port()}/socket"
    done = subprocess.run(
        [sys.executable, "manage.py", "dpsverify", "--url", url, "--duration", "1"],
        cwd=ROOT,
        env=dps_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cannot connect to {url}/websocket?vsn=2.0.0: connection refused" in done.stderr
