"""The hash ring: a golden table pins ownership, so changing the hash or VIRTUAL_NODES is a visible diff."""

import shutil
import subprocess
from pathlib import Path

import pytest

from pubsub.core.ring import VIRTUAL_NODES, HashRing, key_hash
from pubsub.exceptions import ConfigurationError

TWO = HashRing(["ts-1", "ts-2"])
THREE = HashRing(["ts-1", "ts-2", "ts-3"])


# Computed by Erlang's own erlang:md5 on ex_hash_ring's rule (tests/erlang/ring.escript), not by Python.
GOLDEN = [
    # topic, owner of [ts-1, ts-2], owner of [ts-1, ts-2, ts-3], hash
    ("topics:matrix", "ts-2", "ts-3", 13560360997224017915),
    ("room:lobby", "ts-1", "ts-3", 5263948436606799477),
    ("room:1", "ts-1", "ts-3", 2939576652635633082),
    ("room:2", "ts-2", "ts-3", 9965726181468855637),
    ("room:42", "ts-2", "ts-2", 15985999334856890074),
    ("chat:lobby", "ts-1", "ts-1", 8331803413387723852),
    ("guild:81384788765712384", "ts-2", "ts-3", 16506076216248955123),
    ("a", "ts-1", "ts-3", 7000413967451013937),
    ("", "ts-2", "ts-2", 9098107892288553193),
    ("user:42:notifications", "ts-1", "ts-3", 13518740503362578520),
]


@pytest.mark.parametrize("topic, owner_of_two, owner_of_three, hashed", GOLDEN)
def test_golden_owners_are_ex_hash_rings(topic, owner_of_two, owner_of_three, hashed):
    assert key_hash(topic) == hashed
    assert TWO.owner(topic) == owner_of_two
    assert THREE.owner(topic) == owner_of_three


@pytest.mark.skipif(shutil.which("escript") is None, reason="needs Erlang's escript (erl) on PATH")
def test_the_golden_table_is_what_erlang_computes():
    """The table above, recomputed by Erlang now: it was not made up by the code it checks."""
    script = Path(__file__).parent / "erlang" / "ring.escript"
    result = subprocess.run(
        ["escript", str(script), *(topic for topic, *_ in GOLDEN)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(t, two, three, int(h)) for t, two, three, h in rows] == GOLDEN


def test_constants():
    assert VIRTUAL_NODES == 512


def test_member_order_does_not_matter():
    assert HashRing(["ts-2", "ts-1"]).owner("room:1") == TWO.owner("room:1")


def test_shares_are_even_and_sum_to_one():
    shares = THREE.shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    assert all(0.28 < share < 0.38 for share in shares.values()), shares


def test_adding_a_member_moves_about_its_share():
    topics = [f"topic:{i}" for i in range(5000)]
    four = HashRing(["ts-1", "ts-2", "ts-3", "ts-4"])
    moved = [t for t in topics if THREE.owner(t) != four.owner(t)]
    assert 0.20 < len(moved) / len(topics) < 0.30
    assert all(four.owner(t) == "ts-4" for t in moved), "topics only move to the new member"


def test_empty_ring_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="DPS_TOPIC_SERVERS"):
        HashRing([])
