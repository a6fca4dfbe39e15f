"""The chat workload's report: the table per stack and step, the ratios, the saturation plot."""

from __future__ import annotations


def _ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "–"


def print_report(rows: list[dict]) -> None:
    steps = [r for r in rows if r["scenario"] == "chat"]
    if steps:
        first = steps[0]
        print(
            f"\n== chat ({first['clients'] - first['big_room']} clients in rooms of {first['room_size']} "
            f"+ one room of {first['big_room']}, 2 daphne nodes, Poisson publishers) =="
        )
        print(
            f"{'stack':<13} {'offered/s':>9} {'sent/s':>7} {'ok/s':>7} {'deliv/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'errors':>6} {'lost':>5} {'dup':>4} {'closed':>6} {'srv/gen cores':>13} {'p99 ratio':>9}  saturated"
        )
        for row in steps:
            dps = next((r for r in steps if r["stack"] == "dps" and r["offered_per_s"] == row["offered_per_s"]), None)
            print(
                f"{row['stack']:<13} {row['offered_per_s']:>9,} {row['sent_per_s']:>7,.0f} {row['ok_per_s']:>7,.0f} "
                f"{row['deliveries_per_s']:>8,.0f} {row['p50_ms'] or 0:>7,.0f} {row['p99_ms'] or 0:>7,.0f} "
                f"{row['error_count']:>6} {row['lost']:>5} {row['duplicates']:>4} {row['closed']:>6} "
                f"{row['server_cores']:>6.2f}/{row['client_cores']:<6.2f} "
                f"{_ratio(row['p99_ms'], dps and dps['p99_ms']):>9}  {', '.join(row['saturated'])}"
            )
            if row["errors"]:
                print(f"{'':<13} error replies: {row['errors']}")
            if row["close_reasons"]:
                print(f"{'':<13} sockets closed: {row['close_reasons']}")
        print("   (p99 ratio: this stack's p99 over DPS's at the same offered load)")
        sat = {r["stack"]: r for r in rows if r["scenario"] == "chat-saturation"}
        print("\n   sustained publishes/s (highest step that passed) and where it saturated:")
        for name, row in sat.items():
            sustained = row["sustained_ok_per_s"]
            print(
                f"   {name:<13} {sustained or 0:>7,.0f}/s  "
                f"{'DPS ' + _ratio(sat.get('dps', {}).get('sustained_ok_per_s'), sustained) if name != 'dps' else '':<10}"
                + (
                    f" saturated at {row['saturated_at_offered_per_s']:,}/s offered: {', '.join(row['saturated_because'])}"
                    if row["saturated_at_offered_per_s"]
                    else " not saturated by the ladder"
                )
            )
        _print_targets(steps, sat)
    storms = [r for r in rows if r["scenario"] == "join-storm"]
    if storms:
        first = storms[0]
        print(f"\n== join storm ({first['clients']} clients joining {first['rooms']} rooms at once, 2 nodes) ==")
        dps = next((r for r in storms if r["stack"] == "dps"), None)
        for row in storms:
            faster = row is not dps and not row["failed"] and dps and not dps["failed"]
            print(
                f"{row['stack']:<13} {row['joined']:>6} joined, {row['failed']:>5} failed, {row['seconds']:>6.2f} s "
                f"{'DPS ' + _ratio(row['seconds'], dps['seconds']) + ' faster' if faster else '':<17}"
                f" {row['failures'] or ''}"
            )
        print("   (seconds: from the common start until the last successful join)")


def plot(axis, rows: list[dict]) -> None:
    """Achieved (ok) publishes/s against offered, one line per stack; a saturated step is an x."""
    steps = [r for r in rows if r["scenario"] == "chat"]
    for name in dict.fromkeys(r["stack"] for r in steps):
        mine = [r for r in steps if r["stack"] == name]
        line = axis.plot([r["offered_per_s"] for r in mine], [r["ok_per_s"] for r in mine], marker="o", label=name)
        failed = [r for r in mine if r["saturated"]]
        axis.plot(
            [r["offered_per_s"] for r in failed],
            [r["ok_per_s"] for r in failed],
            "x",
            markersize=12,
            color=line[0].get_color(),
        )
    offered = sorted({r["offered_per_s"] for r in steps})
    axis.plot(offered, offered, ":", color="grey", label="offered")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_title("chat: publishes/s achieved (x: saturated)")
    axis.set_xlabel("offered publishes/s")
    axis.set_ylabel("ok replies/s")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()


def _print_targets(steps, sat) -> None:
    def by_offered(name):
        return {r["offered_per_s"]: r for r in steps if r["stack"] == name}

    dps = by_offered("dps")
    if not dps:
        return
    print("\n   targets:")
    survived = {o for name in ("stock-pubsub", "stock-core") for o, r in by_offered(name).items() if not r["saturated"]}
    clean = [o for o in sorted(survived) if o in dps and (dps[o]["error_count"] or dps[o]["lost"])]
    print(
        f"   {'met' if not clean else 'MISSED':<6} DPS 0 errors and 0 lost at every load a stock stack survives"
        + (f" (not at {clean})" if clean else f" ({len(survived)} loads)")
    )
    pubsub = by_offered("stock-pubsub")
    common = sorted(o for o in pubsub if o in dps)
    worse = [o for o in common if (dps[o]["p99_ms"] or 1e9) > (pubsub[o]["p99_ms"] or 1e9)]
    print(
        f"   {'met' if common and not worse else 'MISSED':<6} DPS p99 <= stock-pubsub's at the same offered load"
        + (f" (not at {worse})" if worse else f" ({len(common)} loads)")
    )
    mine, theirs = (sat.get(n, {}).get("sustained_ok_per_s") for n in ("dps", "stock-pubsub"))
    print(
        f"   {'met' if mine and theirs and mine >= 1.5 * theirs else 'MISSED':<6} DPS sustained publishes/s "
        f">= 1.5x stock-pubsub's ({_ratio(mine, theirs)})"
    )
