"""The hash ring: a golden table pins ownership, so changing the hash or VIRTUAL_NODES is a visible diff."""

import pytest

from pubsub.exceptions import ConfigurationError
from pubsub.ring import VIRTUAL_NODES, HashRing, key_hash

TWO = HashRing(["ts-1", "ts-2"])
THREE = HashRing(["ts-1", "ts-2", "ts-3"])


@pytest.mark.parametrize(
    "topic, owner_of_two, owner_of_three",
    [
        ("topics:matrix", "ts-1", "ts-1"),
        ("room:1", "ts-1", "ts-3"),
        ("room:2", "ts-1", "ts-1"),
        ("room:3", "ts-2", "ts-3"),
        ("chat:lobby", "ts-2", "ts-3"),
        ("a", "ts-1", "ts-3"),
        ("guild:81384788765712384", "ts-1", "ts-1"),
        ("user:42:notifications", "ts-2", "ts-3"),
    ],
)
def test_golden_owners(topic, owner_of_two, owner_of_three):
    assert TWO.owner(topic) == owner_of_two
    assert THREE.owner(topic) == owner_of_three


def test_constants():
    assert VIRTUAL_NODES == 512
    assert key_hash("") == 0xD41D8CD98F00B204  # md5("") starts d41d8cd98f00b204


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
