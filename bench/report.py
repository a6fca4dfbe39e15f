"""The whole run's report: each scenario's table with its ratios (the chat, presence, history,\nscale-out, fencing and chaos scenarios print their own), and the PNG plot."""

from __future__ import annotations

from pathlib import Path

from bench import chaos, chat_report, fencing_cost, history_cost, presence, scaleout


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "–"


def print_report(rows) -> None:
    def find(**match):
        return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)

    ran = {r["scenario"] for r in rows}
    if "layer" in ran:
        print("\n== layer fan-out (2 node processes) ==")
        print(
            f"{'members':>8} {'stack':<13} {'deliveries/s':>13} {'lost':>6} {'cmds/pub':>9} {'bytes/pub':>10} {'DPS ratio':>10}"
        )
        for row in [r for r in rows if r["scenario"] == "layer"]:
            dps = find(scenario="layer", stack="dps", members=row["members"])
            print(
                f"{row['members']:>8} {row['stack']:<13} {row['deliveries_per_s']:>13,.0f} {row['lost']:>6} "
                f"{row['redis_commands_per_publish']:>9.1f} {row['redis_bytes_per_publish']:>10,.0f} "
                f"{ratio(dps and dps['deliveries_per_s'], row['deliveries_per_s']):>10}"
            )
    if "e2e" in ran:
        print("\n== end to end (2 daphne nodes, one publisher) ==")
        print(
            f"{'clients':>7} {'mode':<10} {'stack':<13} {'deliv/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
            f"{'lost':>6} {'µs CPU/deliv':>12} {'DPS ratio':>10}"
        )
        for row in [r for r in rows if r["scenario"] == "e2e"]:
            dps = find(scenario="e2e", stack="dps", mode=row["mode"], clients=row["clients"])
            better = (
                ratio(dps and dps["deliveries_per_s"], row["deliveries_per_s"])
                if row["mode"] == "burst"
                else ratio(row["p99_ms"], dps and dps["p99_ms"])
            )
            print(
                f"{row['clients']:>7} {row['mode']:<10} {row['stack']:<13} {row['deliveries_per_s']:>9,.0f} "
                f"{row['p50_ms'] or 0:>7.0f} {row['p99_ms'] or 0:>7.0f} {row['max_ms'] or 0:>7.0f} {row['lost']:>6} "
                f"{row['daphne_cpu_us_per_delivery'] or 0:>12.0f} {better:>10}"
            )
        print("   (DPS ratio: burst = DPS deliveries/s over this stack's; paced = this stack's p99 over DPS's)")
    if "cores" in ran:
        print("\n== node processes sharing one port (DPS, burst) ==")
        print(
            f"{'clients':>7} {'processes':>9} {'deliv/s':>9} {'p99 ms':>7} {'lost':>6} {'µs CPU/deliv':>12} {'vs 1':>6}  sockets"
        )
        for row in [r for r in rows if r["scenario"] == "cores"]:
            one = find(scenario="cores", processes=1, clients=row["clients"])
            print(
                f"{row['clients']:>7} {row['processes']:>9} {row['deliveries_per_s']:>9,.0f} {row['p99_ms'] or 0:>7.0f} "
                f"{row['lost']:>6} {row['daphne_cpu_us_per_delivery'] or 0:>12.0f} "
                f"{ratio(row['deliveries_per_s'], one and one['deliveries_per_s']):>6}  {row['connections_per_process']}"
            )
    if "storm" in ran:
        print("\n== connect storm ==")
        for row in [r for r in rows if r["scenario"] == "storm"]:
            print(
                f"{row['stack']:<13} {row['handshakes']} handshakes: {row['failures']} failed, {row['seconds']:.2f} s"
            )
    if "memory" in ran:
        print("\n== idle memory (one node) ==")
        for row in [r for r in rows if r["scenario"] == "memory"]:
            print(f"{row['stack']:<13} {row['connections']} connections: {row['kb_per_connection']:.1f} KB RSS each")
    chat_report.print_report(rows)
    presence.print_report(rows)
    history_cost.print_report(rows)
    scaleout.print_report(rows)
    fencing_cost.print_report(rows)
    chaos.print_report(rows)


def plot(rows, path: Path) -> bool:
    """One panel per scenario that has a curve (layer, end to end, chat); False if there is none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for scenario, title, xlabel, x, keep in (
        ("layer", "layer fan-out, 2 node processes", "group members", "members", lambda r: True),
        ("e2e", "end to end burst, 2 daphne nodes", "websocket subscribers", "clients", lambda r: r["mode"] == "burst"),
    ):
        curves = {}
        for r in rows:
            if r["scenario"] == scenario and keep(r):
                curves.setdefault(r["stack"], []).append((r[x], r["deliveries_per_s"]))
        if curves:
            panels.append((title, xlabel, curves))
    with_chat = any(r["scenario"] == "chat" for r in rows)
    if not panels and not with_chat:
        return False
    count = len(panels) + with_chat
    figure, axes = plt.subplots(1, count, figsize=(6 * count, 4.5), squeeze=False)
    for axis, (title, xlabel, curves) in zip(axes[0], panels, strict=False):
        for name, points in curves.items():
            axis.plot(*zip(*sorted(points), strict=True), marker="o", label=name)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(title)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("deliveries/s")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    if with_chat:
        chat_report.plot(axes[0][-1], rows)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True
