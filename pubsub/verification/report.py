"""The checker's report as text: a table with one row per topic and a total, the refusals by
reason, and the last line, ``verify: accepted N, lost L, duplicated D, reordered R, refused F,
p99 X ms``, the one a script reads."""

from __future__ import annotations

from pubsub.verification.checker import Report, TopicCounts

__all__ = ["COLUMNS", "lines", "summary"]

SHOWN_IDS = 10

# (heading, what docs/failover.md says it means)
COLUMNS = [
    ("topic", "the topic"),
    ("subs", "its subscribers"),
    ("sent", "publishes sent"),
    ("accepted", "publishes that got phx_reply ok"),
    ("lost", "accepted, and missing at some subscriber held to the promise"),
    ("dup", "received more than once by some subscriber"),
    ("reord", "out of the topic's one order at some subscriber"),
    ("refused", "publishes that got an error reply (reasons below the table)"),
    ("unans", "publishes with no reply by the end of the settle wait"),
    ("unrec", "subscribers whose recovery the server refused (their gap is excused)"),
    ("dropped", "subscribers no longer held to the promise (rejoined without recovery, or not joined at the end)"),
    ("order", "seq: checked against the owner's numbers; merged: against the subscribers' orders merged"),
    ("p50 ms", "median latency, publish sent -> arrival, over every subscriber"),
    ("p99 ms", "99th percentile of the same"),
]


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f}"


def _cells(row: TopicCounts) -> list[str]:
    counts = [row.subscribers, row.sent, row.accepted, row.lost, row.duplicated, row.reordered]
    counts += [row.refused_total, row.unanswered, row.unrecoverable, row.dropped]
    return [row.topic, *map(str, counts), row.order, _ms(row.p(0.5)), _ms(row.p(0.99))]


def lines(report: Report) -> list[str]:
    """The whole report; its last line is summary(report)."""
    table = [[heading for heading, _ in COLUMNS], *map(_cells, report.topics), _cells(report.total)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(table[0]), *map(line, table[1:-1]), "-" * len(line(table[0])), line(table[-1])]
    faulty = [row for row in report.topics if row.faults]
    if faulty:
        out.append(f"ids at fault (at most {SHOWN_IDS} a kind):")
        for row in faulty:
            for kind, ids in row.faults.items():
                shown = ", ".join(map(str, sorted(ids)[:SHOWN_IDS]))
                out.append(f"  {row.topic}: {kind} {shown}{', ...' if len(ids) > SHOWN_IDS else ''}")
    if report.total.refused:
        out.append("refused by reason:")
        for row in [*report.topics, report.total]:
            for reason, count in sorted(row.refused.items()):
                out.append(f"  {row.topic}: {reason}: {count}")
    if report.total.unsent:
        out.append(f"not sent: {report.total.unsent} (their publisher socket was reconnecting)")
    out.append(summary(report))
    return out


def summary(report: Report) -> str:
    total = report.total
    return (
        f"verify: accepted {total.accepted}, lost {total.lost}, duplicated {total.duplicated}, "
        f"reordered {total.reordered}, refused {total.refused_total}, p99 {_ms(total.p(0.99))} ms"
    )
