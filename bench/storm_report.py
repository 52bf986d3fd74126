"""The reconnect storm's figures: one run's from its client reports and counters, the medians over repeats, and a
table per scenario with the ratio of each gateway to Nchan."""

from __future__ import annotations

import statistics
from collections import Counter

BASELINE = "nchan1"
SATURATED = 85  # % of a core: past it a client process may be what limits the storm
ROWS = {  # scenario kind: (label, figure, format)
    "behind": (
        ("all caught up, s", "seconds", "{:.2f}"),
        ("streams/s", "streams_per_s", "{:,.0f}"),
        ("catch-up p50, ms", "p50_ms", "{:.0f}"),
        ("catch-up p99, ms", "p99_ms", "{:.0f}"),
        ("server CPU µs/replayed event", "server_us_per_event", "{:.2f}"),
        ("server CPU µs/stream", "server_us_per_stream", "{:.0f}"),
        ("Redis commands/resume", "redis_calls_per_stream", "{:.2f}"),
        ("Redis CPU µs/stream", "redis_us_per_stream", "{:.1f}"),
        ("client CPU %, busiest process", "client_cpu_percent", "{:.0f}"),
    ),
    "fresh": (
        ("all open, s", "seconds", "{:.2f}"),
        ("streams/s", "streams_per_s", "{:,.0f}"),
        ("open p50, ms", "p50_ms", "{:.0f}"),
        ("open p99, ms", "p99_ms", "{:.0f}"),
        ("server CPU µs/new stream", "server_us_per_stream", "{:.0f}"),
        ("Redis commands/new stream", "redis_calls_per_stream", "{:.2f}"),
        ("server RSS KiB/open stream, 1st run", "rss_kib_per_stream", "{:.1f}"),
        ("Redis CPU µs/stream", "redis_us_per_stream", "{:.1f}"),
        ("client CPU %, busiest process", "client_cpu_percent", "{:.0f}"),
    ),
}
ROUGH = {  # figure: (the figure it comes from, under which it is rough): 20 clock ticks of CPU, half a second of wall
    "server_us_per_event": ("server_cpu_s", 0.2),
    "server_us_per_stream": ("server_cpu_s", 0.2),
    "redis_us_per_stream": ("redis_cpu_s", 0.2),
    "client_cpu_percent": ("client_wall_s", 0.5),
}
NO_RATIO = {"client_cpu_percent"}
ROWS["one"] = tuple(row for row in ROWS["behind"] if row[1] != "server_us_per_event")
ROWS["empty"] = ROWS["fresh"]


def figures(
    reports: list[dict], closing: list[dict], behind: int, server_cpu: float, redis_cpu: float, calls: dict
) -> dict:
    """One run's figures, from its client processes' reports and the server's and Redis's counters over the storm."""
    clients = sum(r["clients"] for r in reports)
    failures = Counter()
    for report in reports:
        failures.update(report["failures"])
    for report in closing:
        failures.update({f"dropped before all were open: {k}": v for k, v in report["drop_reasons"].items()})
    start = min((r["first_start_ns"] for r in reports if r["first_start_ns"]), default=0)
    end = max(r["last_ns"] for r in reports)
    seconds = (end - start) / 1e9 if start and end > start else None
    durations = sorted(d for r in reports for d in r["durations_ns"])
    return {
        "clients": clients,
        "ok": sum(r["ok"] for r in reports) - sum(r["dropped"] for r in closing),
        "failures": dict(failures),
        "seconds": seconds,
        "streams_per_s": clients / seconds if seconds else None,
        "p50_ms": _percentile(durations, 0.50),
        "p99_ms": _percentile(durations, 0.99),
        "max_ms": durations[-1] / 1e6 if durations else None,
        "server_cpu_s": server_cpu,
        "server_us_per_stream": server_cpu / clients * 1e6,
        "server_us_per_event": server_cpu / (clients * behind) * 1e6 if behind else None,
        "redis_cpu_s": redis_cpu,
        "redis_us_per_stream": redis_cpu / clients * 1e6,
        "redis_calls": calls,
        "redis_calls_per_stream": sum(calls.values()) / clients,
        "client_processes": len(reports),
        "client_cpu_s": [r["cpu_s"] for r in reports],
        "client_wall_s": max(r["wall_s"] for r in reports),
        "client_cpu_percent": max(r["cpu_s"] / r["wall_s"] * 100 if r["wall_s"] else 0 for r in reports),
    }


def _percentile(ordered: list[int], q: float) -> float | None:
    return ordered[round(q * (len(ordered) - 1))] / 1e6 if ordered else None


def medians(runs: list[dict]) -> list[dict]:
    """Per scenario and server: the median of each figure over its runs, the worst ok count, and every failure."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        if "error" not in run:
            groups.setdefault((run["scenario"], run["server"]), []).append(run)
    out = []
    for (scenario, server), group in groups.items():
        median = {"scenario": scenario, "server": server, "runs": len(group), "clients": group[0]["clients"]}
        for key in [key for _, key, _ in ROWS[scenario]] + ["server_cpu_s", "redis_cpu_s", "client_wall_s"]:
            values = [r[key] for r in group if r.get(key) is not None]
            median[key] = statistics.median(values) if values else None
        median["ok_worst"] = min(r["ok"] for r in group)
        commands = {name for r in group for name in r["redis_calls"]}
        median["redis_calls_per_stream_by_command"] = {
            name: statistics.median(r["redis_calls"].get(name, 0) / r["clients"] for r in group)
            for name in sorted(commands)
        }
        out.append(median)
    return out


def table(rows: list[dict], servers: list[str]) -> str:
    lines = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        mine = {r["server"]: r for r in rows if r["scenario"] == scenario}
        shown = [s for s in servers if s in mine]
        ratios = [s for s in shown if s.startswith("gateway") and BASELINE in mine]
        first = mine[shown[0]]
        lines += ["", f"({scenario}) {first['clients']:,} clients, median of {first['runs']} run(s)"]
        lines.append(
            " " * 32 + "".join(s.rjust(14) for s in shown) + "".join(f"{s}/{BASELINE}".rjust(18) for s in ratios)
        )
        for label, key, fmt in ROWS[scenario]:
            cells = [_cell(mine[s], key, fmt).rjust(14) for s in shown]
            if key not in NO_RATIO:
                cells += [_ratio(mine[s][key], mine[BASELINE][key]).rjust(18) for s in ratios]
            lines.append(label.ljust(32) + "".join(cells))
        lines.append(
            "clients ok, worst run".ljust(32)
            + "".join(f"{mine[s]['ok_worst']}/{mine[s]['clients']}".rjust(14) for s in shown)
            + ("   FAILED: see below" if any(mine[s]["ok_worst"] != mine[s]["clients"] for s in shown) else "")
        )
        for server in shown:
            top = sorted(mine[server]["redis_calls_per_stream_by_command"].items(), key=lambda kv: -kv[1])
            named = ", ".join(f"{name} {calls:.2f}" for name, calls in top[:6] if calls >= 0.005)
            lines.append(f"  {server} Redis commands per stream: {named or 'none'}")
            if (mine[server]["client_cpu_percent"] or 0) > SATURATED:
                lines.append(f"  {server}: a client process was near saturation: the clients may be the limit")
    return "\n".join(lines)


def failures(runs: list[dict]) -> list[str]:
    """One loud line per run that errored or in which a client did not get exactly what it should have."""
    lines = []
    for run in runs:
        where = f"{run['server']} ({run['scenario']}, repeat {run['repeat'] + 1})"
        if "error" in run:
            lines.append(f"!!! FAILED {where}: {run['error']}")
        elif run["ok"] != run["clients"]:
            lines.append(f"!!! FAILED {where}: {run['ok']:,} of {run['clients']:,} clients ok; {run['failures']}")
    return lines


def _cell(row: dict, key: str, fmt: str) -> str:
    if row[key] is None:
        return "-"
    rough = key in ROUGH and row[ROUGH[key][0]] < ROUGH[key][1]
    return ("~" if rough else "") + fmt.format(row[key])


def _ratio(mine: float | None, theirs: float | None) -> str:
    return "-" if mine is None or not theirs else f"{mine / theirs:.2f}x"
