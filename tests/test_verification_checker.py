"""The delivery-promise checker as tables: records in, per-topic counts out."""

import pytest

from pubsub.verification import report
from pubsub.verification.checker import (
    ACCEPTED,
    REFUSED,
    UNANSWERED,
    UNSENT,
    Delivery,
    Gap,
    Publish,
    Subscriber,
    check,
    outstanding,
    percentile,
)

T = "verify:r:0"


def published(*ids, topic=T, outcome=ACCEPTED):
    """Publishes sent at t = id seconds."""
    return [Publish(i, topic, float(i), outcome) for i in ids]


def sub(*arrivals, epoch="E", numbered=True, counted=True, gaps=(), topic=T):
    """A subscriber that received ids, the n-th arriving at t = 100 + n. An id alone is numbered
    with itself in epoch E; (id, seq) and (id, epoch, seq) say otherwise."""
    deliveries = []
    for n, arrival in enumerate(arrivals):
        if not isinstance(arrival, tuple):
            arrival = (arrival, arrival)
        if len(arrival) == 3:
            deliveries.append(Delivery(arrival[0], 100.0 + n, arrival[1], arrival[2]))
            continue
        id_, seq = arrival
        if numbered:
            deliveries.append(Delivery(id_, 100.0 + n, epoch, seq))
        else:
            deliveries.append(Delivery(id_, 100.0 + n))
    return Subscriber(topic, deliveries, list(gaps), counted)


def counts(publishes, subscribers):
    total = check(publishes, subscribers).total
    return {
        "accepted": total.accepted,
        "lost": total.lost,
        "duplicated": total.duplicated,
        "reordered": total.reordered,
        "unrecoverable": total.unrecoverable,
        "dropped": total.dropped,
    }


def zero(**changed):
    return {"accepted": 5, "lost": 0, "duplicated": 0, "reordered": 0, "unrecoverable": 0, "dropped": 0, **changed}


GAP_2_TO_4 = Gap("E", 2, "E", 4, since=2.0, until=4.5)  # refused after seq 2; continue from 4

CASES = [
    # (what, subscribers of ids 1..5, expected totals)
    ("all delivered, in order", [sub(1, 2, 3, 4, 5), sub(1, 2, 3, 4, 5)], zero()),
    ("one subscriber misses one", [sub(1, 2, 3, 4, 5), sub(1, 2, 4, 5)], zero(lost=1)),
    ("two miss the same one: one message lost", [sub(1, 2, 4, 5), sub(1, 2, 4, 5)], zero(lost=1)),
    ("a repeat", [sub(1, 2, 3, 3, 4, 5), sub(1, 2, 3, 4, 5)], zero(duplicated=1)),
    ("one arrives late at one subscriber", [sub(1, 3, 4, 2, 5), sub(1, 2, 3, 4, 5)], zero(reordered=1)),
    ("one id numbered twice", [sub(1, 2, 3, 4, 5), sub(1, 2, (3, 6), 4, 5)], zero(reordered=1)),
    ("two ids under one number", [sub(1, 2, (3, 7), (4, 7), 5), sub(1, 2, (3, 7), (4, 7), 5)], zero(reordered=2)),
    (
        "a refused recovery excuses its gap",
        [sub(1, 2, 5, gaps=[GAP_2_TO_4]), sub(1, 2, 3, 4, 5)],
        zero(unrecoverable=1),
    ),
    ("but not what came after it", [sub(1, 2, gaps=[GAP_2_TO_4]), sub(1, 2, 3, 4, 5)], zero(lost=1, unrecoverable=1)),
    (
        "a refusal into a new epoch excuses the old epoch's rest and the new one up to its position",
        [
            sub(1, 2, (5, "F", 2), gaps=[Gap("E", 2, "F", 1, 2.0, 4.5)]),
            sub(1, 2, (3, "E", 3), (4, "F", 1), (5, "F", 2)),
        ],
        zero(unrecoverable=1),
    ),
    (
        "an id nobody received is excused by time, for the one told only",
        [sub(1, 2, 5, gaps=[GAP_2_TO_4]), sub(1, 2, 5)],
        zero(lost=2, unrecoverable=1),
    ),
    ("a dropped subscriber is owed nothing", [sub(1, 2, counted=False), sub(1, 2, 3, 4, 5)], zero(dropped=1)),
    ("but its repeats count", [sub(1, 1, counted=False), sub(1, 2, 3, 4, 5)], zero(dropped=1, duplicated=1)),
]


@pytest.mark.parametrize("what, subscribers, expected", CASES, ids=[case[0] for case in CASES])
def test_counts(what, subscribers, expected):
    assert counts(published(1, 2, 3, 4, 5), subscribers) == expected


MERGED = [
    # (what, subscribers' arrival orders without numbers, reordered)
    ("they agree", [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]], 0),
    ("they agree, some missing some", [[1, 2, 4, 5], [1, 3, 4], [2, 3, 5]], 0),
    ("one swaps two", [[1, 2, 3, 4, 5], [1, 3, 2, 4, 5], [1, 2, 3, 4, 5]], 1),
    ("two against two", [[1, 2, 3], [1, 2, 3], [2, 1, 3], [2, 1, 3]], 1),
    ("one moves one far", [[1, 2, 3, 4, 5], [2, 3, 4, 5, 1]], 1),
]


@pytest.mark.parametrize("what, orders, reordered", MERGED, ids=[case[0] for case in MERGED])
def test_merged_order(what, orders, reordered):
    row = check(published(1, 2, 3, 4, 5), [sub(*order, numbered=False) for order in orders]).total
    assert (row.order, row.reordered) == ("merged", reordered)


def test_merged_order_is_not_fooled_by_arrival_times_under_loss():
    """A, then B everywhere; A reached only the late node, B both: B's median arrival is earlier
    than A's, yet no subscriber saw them out of order."""
    early = Subscriber(T, [Delivery(2, 1.001)])
    late = [Subscriber(T, [Delivery(1, 1.010), Delivery(2, 1.011)]) for _ in range(2)]
    also_early = Subscriber(T, [Delivery(2, 1.001)])
    assert check(published(1, 2), [early, also_early, *late]).total.reordered == 0


def test_outcomes_per_topic_and_reasons():
    other = "verify:r:1"
    publishes = [
        *published(1, 2, 3),
        Publish(4, T, 4.0, REFUSED, "rate limited"),
        Publish(5, T, 5.0, REFUSED, "rate limited"),
        Publish(6, other, 6.0, REFUSED, "unavailable"),
        Publish(7, other, 7.0, UNANSWERED),
        Publish(8, other, None, UNSENT),
    ]
    subscribers = [sub(1, 2, 3), sub(7, topic=other)]  # an unanswered id delivered is fine
    result = check(publishes, subscribers)
    rows = {row.topic: row for row in result.topics}
    assert (rows[T].sent, rows[T].accepted, dict(rows[T].refused), rows[T].unanswered) == (5, 3, {"rate limited": 2}, 0)
    assert (rows[other].sent, rows[other].accepted, rows[other].unanswered, rows[other].unsent) == (2, 0, 1, 1)
    assert dict(result.total.refused) == {"rate limited": 2, "unavailable": 1}
    assert result.passed and result.total.lost == 0


def test_latency_is_publish_sent_to_first_arrival_of_accepted_ids():
    publishes = [Publish(1, T, 10.0, ACCEPTED), Publish(2, T, 20.0, ACCEPTED), Publish(3, T, 30.0, UNANSWERED)]
    subscribers = [
        Subscriber(T, [Delivery(1, 10.010, "E", 1), Delivery(1, 15.0, "E", 1), Delivery(2, 20.030, "E", 2)]),
        Subscriber(T, [Delivery(1, 10.020, "E", 1), Delivery(2, 20.040, "E", 2), Delivery(3, 31.0, "E", 3)]),
    ]
    row = check(publishes, subscribers).total
    assert [round(x, 3) for x in sorted(row.latencies)] == [0.01, 0.02, 0.03, 0.04]
    assert (round(row.p(0.5), 3), round(row.p(0.99), 3)) == (0.02, 0.04)
    assert row.duplicated == 1


@pytest.mark.parametrize(
    "values, q, expected",
    [
        ([], 0.5, None),
        ([5.0], 0.99, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        (list(map(float, range(1, 101))), 0.99, 99.0),
    ],
)
def test_percentile_is_nearest_rank(values, q, expected):
    assert percentile(values, q) == expected


def test_outstanding_is_what_counted_subscribers_still_miss():
    publishes = published(1, 2, 3)
    assert outstanding(publishes, [sub(1, 2, 3), sub(1)]) == 2
    assert outstanding(publishes, [sub(1, 2, 3), sub(1, counted=False)]) == 0
    assert outstanding(publishes, [sub(1, 3, gaps=[Gap("E", 1, "E", 2, 1.0, 2.5)]), sub(1, 2, 3)]) == 0


def test_report_lines_end_with_the_summary():
    publishes = [*published(1, 2, 3), Publish(4, T, 4.0, REFUSED, "rate limited")]
    result = check(publishes, [sub(1, 2, 3), sub(1, 3)])
    lines = report.lines(result)
    assert lines[0].split()[:4] == ["topic", "subs", "sent", "accepted"]
    assert lines[1].split()[:7] == [T, "2", "4", "3", "1", "0", "0"]
    assert "  verify:r:0: rate limited: 1" in lines
    assert "  verify:r:0: lost 2" in lines  # the ids at fault, for a look at the server's logs
    assert lines[-1] == "verify: accepted 3, lost 1, duplicated 0, reordered 0, refused 1, p99 99000.0 ms"
    assert not result.passed


def test_an_empty_run_reports_no_latency():
    assert (
        report.summary(check([], [])) == "verify: accepted 0, lost 0, duplicated 0, reordered 0, refused 0, p99 n/a ms"
    )
