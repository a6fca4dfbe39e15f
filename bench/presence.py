"""Presence in a big room: N members join at once; presence frames and bytes every member receives.

DPS coalesces a topic's changes for DPS_PRESENCE_WINDOW (0.1 s) into one diff, encoded once per
node. Phoenix sends one diff per join to every member already there, so N arrivals cost
1 + 2 + ... + N frames; that column is computed from the same joins (each one-join diff encoded as
Phoenix would send it), since no Phoenix server runs here. Both exclude the presence_state each
joiner gets once. DPS runs for real: two topic servers over a private Redis and one node (this
process) whose N channels are counted as a socket's fastlane would be written.
"""

from __future__ import annotations

import asyncio
import time

from pubsub.core import protocol
from pubsub.core.messages import BROADCAST_TYPE

TOPIC = "room:presence-bench"


def run(redis_url: str, members: int) -> dict:
    return asyncio.run(_run(redis_url, members))


async def _run(redis_url: str, members: int) -> dict:
    from pubsub.layer import TopicRingLayer

    layer = TopicRingLayer(node="bench-presence", topic_servers=["ts-1", "ts-2"], redis_url=redis_url, capacity=10)
    frames = bytes_sent = 0
    sizes: dict[str, int] = {}
    complete: set[str] = set()
    done = asyncio.Event()

    def whole() -> bool:
        return len(layer._replicas.get(TOPIC, ())) == members

    def counter(channel):
        def fastlane(message):
            # The node applied the diff to its replica before handing it to members: a member that
            # receives a diff after which the replica holds everyone sees everyone (the tests check
            # clients' views frame by frame; here only frames, bytes and time are measured).
            nonlocal frames, bytes_sent
            if message.get("type") != BROADCAST_TYPE:
                return True
            tail = message["tail"]
            size = sizes.get(tail)
            if size is None:
                size = sizes[tail] = len(protocol.frame_from_tail('"1"', tail).encode())
            frames += 1
            bytes_sent += size
            if whole():
                complete.add(channel)
                if len(complete) == members:
                    done.set()
            return True

        return fastlane

    async def join(channel, key):
        """What a socket's join does: subscribe, take the presence_state, be tracked."""
        layer.register_fastlane(channel, counter(channel))
        await layer.group_add(TOPIC, channel)
        await layer.presence_state_json(TOPIC)
        await layer.track_presence(channel, TOPIC, key, {})

    channels = [await layer.new_channel() for _ in range(members)]
    started = time.monotonic()
    await asyncio.gather(*(join(channel, f"user{i}") for i, channel in enumerate(channels)))
    try:
        await asyncio.wait_for(done.wait(), 60)
    except TimeoutError:
        raise AssertionError(f"after 60 s, {len(complete)} of {members} members see everyone") from None
    seconds = time.monotonic() - started
    await layer.close()
    one_per_join_frames, one_per_join_bytes = _one_diff_per_join(members)
    return {
        "scenario": "presence",
        "members": members,
        "frames": frames,
        "bytes": bytes_sent,
        "frames_per_member": frames / members,
        "one_per_join_frames": one_per_join_frames,
        "one_per_join_bytes": one_per_join_bytes,
        "seconds": seconds,
    }


def _one_diff_per_join(members: int) -> tuple[int, int]:
    """Phoenix: the i-th join's diff goes to the i members then present (the joiner included)."""
    frames = total = 0
    for i in range(members):
        meta = {"online_at": int(time.time()), "phx_ref": "F8x1Qv2mAAEAAQAB"}  # Phoenix's refs are 16 chars too
        diff = {"joins": {f"user{i}": {"metas": [meta]}}, "leaves": {}}
        size = len(protocol.encode_json(["1", None, TOPIC, "presence_diff", diff]).encode())
        frames += i + 1
        total += (i + 1) * size
    return frames, total


def print_report(rows) -> None:
    rows = [r for r in rows if r["scenario"] == "presence"]
    if not rows:
        return
    print("\n== presence: N members join one room at once (diff frames and bytes to all members) ==")
    print(
        f"{'members':>8} {'DPS frames':>11} {'DPS bytes':>12} {'per member':>10} {'1-diff/join frames':>19} "
        f"{'1-diff/join bytes':>18} {'frames ratio':>12} {'bytes ratio':>11} {'converged s':>11}"
    )
    for row in rows:
        print(
            f"{row['members']:>8} {row['frames']:>11,} {row['bytes']:>12,} {row['frames_per_member']:>10.1f} "
            f"{row['one_per_join_frames']:>19,} {row['one_per_join_bytes']:>18,} "
            f"{row['one_per_join_frames'] / row['frames']:>11.0f}x {row['one_per_join_bytes'] / row['bytes']:>10.1f}x "
            f"{row['seconds']:>11.2f}"
        )
