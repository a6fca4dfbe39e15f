"""The delivery-promise checker: what a workload saw in, per-topic counts out. No I/O.

The promise: a publish the server accepted (its ``phx_reply`` was ok) reaches every subscriber of
its topic exactly once, and all subscribers of a topic see its messages in one order, the owner's
sequence order. A subscriber is held to it while it stays joined, and across a rejoin that
recovered (``recover`` in the join params). Where the server refused a recovery it told the
subscriber what it missed: that gap is excused, and the subscriber is counted as unrecoverable.
A subscriber that rejoined without recovery, or had no join at the end, is promised nothing more
and counted as dropped: its duplicates and order still count, its missing messages do not.

Order: when the broadcasts carry the owner's numbers (a recovering join's ref is
``"<epoch>:<seq>"``), each subscriber's arrivals must follow them, every id must carry one number
everywhere, and no number may carry two ids. Otherwise the subscribers' own orders are merged
into one (a topological order of "came right after", ties broken by the median arrival time):
when they agree, it is an order every one of them follows, even when some missed messages.
"""

from __future__ import annotations

import heapq
import math
import statistics
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "ACCEPTED",
    "REFUSED",
    "UNANSWERED",
    "UNSENT",
    "Publish",
    "Delivery",
    "Gap",
    "Subscriber",
    "TopicCounts",
    "Report",
    "check",
    "outstanding",
    "percentile",
]

ACCEPTED = "accepted"  # phx_reply ok
REFUSED = "refused"  # phx_reply error, with its reason
UNANSWERED = "unanswered"  # no reply (yet, or ever: its socket closed)
UNSENT = "unsent"  # never sent: its publisher socket was reconnecting


@dataclass
class Publish:
    """One id the workload published (or meant to)."""

    id: int
    topic: str
    sent_at: float | None = None  # the workload's clock; None: not sent
    outcome: str = UNANSWERED
    reason: str | None = None  # a refusal's reason


@dataclass(frozen=True)
class Delivery:
    """One broadcast a subscriber received; epoch and seq from its ref, when it carries them."""

    id: int
    at: float
    epoch: str | None = None
    seq: int | None = None


@dataclass(frozen=True)
class Gap:
    """A recovery the server refused: the subscriber misses what came after (epoch, after_seq) up to
    (new_epoch, upto_seq), the position the server said to continue from. For an id that no
    subscriber received (so its number is unknown), the publish times since..until stand in."""

    epoch: str
    after_seq: int
    new_epoch: str
    upto_seq: int
    since: float  # when the last message it had before the gap was sent (or when it joined)
    until: float  # when the refusal came

    def excuses(self, label: tuple[str, int] | None, sent_at: float | None) -> bool:
        if label is None:
            return sent_at is not None and self.since <= sent_at <= self.until
        epoch, seq = label
        if epoch == self.epoch and seq > self.after_seq:
            return epoch != self.new_epoch or seq <= self.upto_seq
        return epoch == self.new_epoch and seq <= self.upto_seq


@dataclass
class Subscriber:
    """What one subscriber of one topic received, in arrival order."""

    topic: str
    deliveries: list[Delivery] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    counted: bool = True  # False: dropped (rejoined without recovery, or not joined at the end)


@dataclass
class TopicCounts:
    """One row of the report: messages counted once each, however many subscribers saw the fault."""

    topic: str
    subscribers: int = 0
    sent: int = 0
    accepted: int = 0
    lost: int = 0  # accepted, and missing at some counted subscriber (not excused)
    duplicated: int = 0  # received more than once by some subscriber
    reordered: int = 0  # out of the topic's one order at some subscriber
    refused: Counter = field(default_factory=Counter)  # reason -> publishes
    unanswered: int = 0
    unsent: int = 0
    unrecoverable: int = 0  # subscribers whose recovery the server refused (their gap excused)
    dropped: int = 0  # subscribers no longer held to the promise
    deliveries: int = 0
    order: str = "seq"  # "seq": the owner's numbers; "merged": the subscribers' orders merged
    latencies: list[float] = field(default_factory=list)  # seconds, publish sent -> first arrival
    faults: dict[str, set[int]] = field(default_factory=dict)  # "lost"/"duplicated"/"reordered" -> ids

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    def p(self, q: float) -> float | None:
        return percentile(self.latencies, q)


@dataclass
class Report:
    topics: list[TopicCounts]
    total: TopicCounts

    @property
    def passed(self) -> bool:
        return self.total.lost == 0 and self.total.duplicated == 0 and self.total.reordered == 0


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least q of all values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def check(publishes: Iterable[Publish], subscribers: Iterable[Subscriber]) -> Report:
    publishes, subscribers = list(publishes), list(subscribers)
    by_topic_publishes: dict[str, list[Publish]] = defaultdict(list)
    by_topic_subscribers: dict[str, list[Subscriber]] = defaultdict(list)
    for publish in publishes:
        by_topic_publishes[publish.topic].append(publish)
    for subscriber in subscribers:
        by_topic_subscribers[subscriber.topic].append(subscriber)
    names = sorted(set(by_topic_publishes) | set(by_topic_subscribers), key=_natural)
    rows = [_check_topic(name, by_topic_publishes[name], by_topic_subscribers[name]) for name in names]
    total = TopicCounts("total", order="seq" if all(row.order == "seq" for row in rows) else "merged")
    for row in rows:
        for name in ("subscribers", "sent", "accepted", "lost", "duplicated", "reordered", "unanswered", "unsent"):
            setattr(total, name, getattr(total, name) + getattr(row, name))
        for name in ("unrecoverable", "dropped", "deliveries"):
            setattr(total, name, getattr(total, name) + getattr(row, name))
        total.refused.update(row.refused)
        total.latencies.extend(row.latencies)
    return Report(rows, total)


def outstanding(publishes: Iterable[Publish], subscribers: Iterable[Subscriber]) -> int:
    """Accepted messages still owed to counted subscribers (what a settle waits for)."""
    publishes = list(publishes)
    labels = _labels(subscribers := list(subscribers))
    by_topic: dict[str, list[Publish]] = defaultdict(list)
    for publish in publishes:
        if publish.outcome == ACCEPTED:
            by_topic[publish.topic].append(publish)
    return sum(len(_missing(subscriber, by_topic[subscriber.topic], labels)) for subscriber in subscribers)


def _check_topic(topic: str, publishes: list[Publish], subscribers: list[Subscriber]) -> TopicCounts:
    row = TopicCounts(topic, subscribers=len(subscribers))
    sent_at = {}
    accepted = []
    for publish in publishes:
        if publish.outcome == UNSENT or publish.sent_at is None:
            row.unsent += 1
            continue
        row.sent += 1
        sent_at[publish.id] = publish.sent_at
        if publish.outcome == ACCEPTED:
            accepted.append(publish)
        elif publish.outcome == REFUSED:
            row.refused[publish.reason or "error"] += 1
        else:
            row.unanswered += 1
    row.accepted = len(accepted)
    accepted_ids = {publish.id for publish in accepted}
    labels = _labels(subscribers)
    lost, duplicated = set(), set()
    for subscriber in subscribers:
        row.unrecoverable += bool(subscriber.gaps)
        row.dropped += not subscriber.counted
        row.deliveries += len(subscriber.deliveries)
        counts = Counter(delivery.id for delivery in subscriber.deliveries)
        duplicated.update(id_ for id_, n in counts.items() if n > 1)
        lost.update(_missing(subscriber, accepted, labels))
        seen = set()
        for delivery in subscriber.deliveries:
            if delivery.id in accepted_ids and delivery.id not in seen:
                row.latencies.append(delivery.at - sent_at[delivery.id])
            seen.add(delivery.id)
    row.lost, row.duplicated = len(lost), len(duplicated)
    numbered = all(d.seq is not None for s in subscribers for d in s.deliveries)
    row.order = "seq" if numbered else "merged"
    reordered = _out_of_seq_order(subscribers, labels) if numbered else _out_of_merged_order(subscribers)
    row.reordered = len(reordered)
    row.faults = {
        name: ids for name, ids in [("lost", lost), ("duplicated", duplicated), ("reordered", reordered)] if ids
    }
    return row


def _labels(subscribers: Iterable[Subscriber]) -> dict[int, tuple[str, int]]:
    """id -> the (epoch, seq) most subscribers received it with."""
    seen: dict[int, Counter] = defaultdict(Counter)
    for subscriber in subscribers:
        for delivery in subscriber.deliveries:
            if delivery.seq is not None:
                seen[delivery.id][(delivery.epoch or "", delivery.seq)] += 1
    return {id_: labels.most_common(1)[0][0] for id_, labels in seen.items()}


def _missing(subscriber: Subscriber, accepted: list[Publish], labels: dict[int, tuple[str, int]]) -> set[int]:
    if not subscriber.counted:
        return set()
    received = {delivery.id for delivery in subscriber.deliveries}
    return {
        publish.id
        for publish in accepted
        if publish.id not in received
        and not any(gap.excuses(labels.get(publish.id), publish.sent_at) for gap in subscriber.gaps)
    }


def _first_arrivals(subscriber: Subscriber) -> list[Delivery]:
    seen, first = set(), []
    for delivery in subscriber.deliveries:
        if delivery.id not in seen:
            seen.add(delivery.id)
            first.append(delivery)
    return first


def _out_of_seq_order(subscribers: list[Subscriber], labels: dict[int, tuple[str, int]]) -> set[int]:
    """Ids that break the owner's order: numbered differently at two subscribers, sharing a number
    with another id, or arriving after a higher number at some subscriber."""
    bad = set()
    numbers: dict[int, set] = defaultdict(set)
    holders: dict[tuple[str, int], set] = defaultdict(set)
    first_seen: dict[str, float] = {}
    for subscriber in subscribers:
        for delivery in subscriber.deliveries:
            label = (delivery.epoch or "", delivery.seq)
            numbers[delivery.id].add(label)
            holders[label].add(delivery.id)
            first_seen[label[0]] = min(first_seen.get(label[0], delivery.at), delivery.at)
    bad.update(id_ for id_, seen in numbers.items() if len(seen) > 1)
    bad.update(id_ for ids in holders.values() if len(ids) > 1 for id_ in ids)
    epoch_rank = {epoch: rank for rank, epoch in enumerate(sorted(first_seen, key=first_seen.get))}
    for subscriber in subscribers:
        arrivals = _first_arrivals(subscriber)
        keys = [(epoch_rank[d.epoch or ""], d.seq) for d in arrivals]
        bad.update(arrivals[i].id for i in _outside_longest_increasing(keys))
    return bad


def _out_of_merged_order(subscribers: list[Subscriber]) -> set[int]:
    """Ids out of place at some subscriber against the subscribers' orders merged into one."""
    orders = [[d.id for d in _first_arrivals(subscriber)] for subscriber in subscribers]
    times: dict[int, list[float]] = defaultdict(list)
    for subscriber in subscribers:
        for delivery in _first_arrivals(subscriber):
            times[delivery.id].append(delivery.at)
    rank = {id_: i for i, id_ in enumerate(_merge(orders, {id_: statistics.median(t) for id_, t in times.items()}))}
    bad = set()
    for order in orders:
        bad.update(order[i] for i in _outside_longest_increasing([rank[id_] for id_ in order]))
    return bad


def _merge(orders: list[list[int]], median: dict[int, float]) -> list[int]:
    """A topological order of the edges "b came right after a" at some subscriber; where they
    contradict each other (a cycle), the earliest median arrival goes first."""
    after: dict[int, set] = defaultdict(set)
    indegree: Counter = Counter({id_: 0 for id_ in median})
    for order in orders:
        for a, b in zip(order, order[1:], strict=False):
            if b not in after[a]:
                after[a].add(b)
                indegree[b] += 1
    ready = [(median[id_], id_) for id_, n in indegree.items() if n == 0]
    heapq.heapify(ready)
    placed, merged = set(), []
    waiting = sorted((median[id_], id_) for id_ in median)
    while len(merged) < len(median):
        if not ready:  # a cycle: take the earliest one not yet placed
            while waiting[0][1] in placed:
                waiting.pop(0)
            ready.append(waiting[0])
        _, id_ = heapq.heappop(ready)
        if id_ in placed:
            continue
        placed.add(id_)
        merged.append(id_)
        for following in after[id_]:
            indegree[following] -= 1
            if indegree[following] == 0 and following not in placed:
                heapq.heappush(ready, (median[following], following))
    return merged


def _outside_longest_increasing(keys: list) -> set[int]:
    """Positions outside one longest strictly increasing subsequence of keys: the fewest arrivals
    that, taken out, leave the rest in order."""
    tails: list = []  # tails[k]: the smallest last key of an increasing run of length k + 1
    tail_at: list[int] = []
    previous = [-1] * len(keys)
    for i, key in enumerate(keys):
        k = bisect_left(tails, key)
        if k == len(tails):
            tails.append(key)
            tail_at.append(i)
        else:
            tails[k], tail_at[k] = key, i
        previous[i] = tail_at[k - 1] if k else -1
    kept = set()
    i = tail_at[-1] if tail_at else -1
    while i >= 0:
        kept.add(i)
        i = previous[i]
    return set(range(len(keys))) - kept


def _natural(name: str) -> tuple:
    """verify:x:2 before verify:x:10."""
    head, _, tail = name.rpartition(":")
    return (head, int(tail), "") if tail.isdigit() else (name, -1, name)
