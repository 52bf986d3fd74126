"""The results: a table per scenario with ratios against Nchan, the JSON file, the latency plot, the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE = "nchan1"
COLUMNS = (
    ("server", 9, "{}"),
    ("dlv/s", 8, "{:,.0f}"),
    ("cpu µs/dlv", 10, "{:.2f}"),
    ("×nchan1", 7, "{:.2f}"),
    ("p50 ms", 8, "{:.1f}"),
    ("p99 ms", 8, "{:.1f}"),
    ("×nchan1", 7, "{:.2f}"),
    ("max ms", 8, "{:.1f}"),
    ("KiB/idle", 8, "{:.1f}"),
    ("all?", 4, "{}"),
    ("lg cpu%", 7, "{:.0f}"),
    ("redis µs", 8, "{:.2f}"),
)


def representatives(results: list[dict]) -> list[dict]:
    """One result per scenario and server: of repeated runs, the one with the median CPU per delivery."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for result in results:
        groups.setdefault((result["scenario"], result["server"]), []).append(result)
    chosen = []
    for runs in groups.values():
        measured = sorted(
            (r for r in runs if r.get("server_cpu_us_per_delivery") is not None),
            key=lambda r: r["server_cpu_us_per_delivery"],
        )
        pick = measured[(len(measured) - 1) // 2] if measured else runs[0]
        chosen.append({**pick, "runs": len(runs), "all_delivered_every_run": all(r.get("all_delivered") for r in runs)})
    return chosen


def with_ratios(results: list[dict]) -> list[dict]:
    """Each result with ``cpu_ratio`` and ``p99_ratio`` against Nchan with one worker in the same scenario."""
    baseline = {r["scenario"]: r for r in results if r["server"] == BASELINE and "skipped" not in r}
    for result in results:
        base = baseline.get(result["scenario"])
        for key, field in (("cpu_ratio", "server_cpu_us_per_delivery"), ("p99_ratio", "p99_ms")):
            mine, theirs = result.get(field), base.get(field) if base else None
            result[key] = mine / theirs if mine is not None and theirs else None
    return results


def table(results: list[dict]) -> str:
    lines = []
    for key in dict.fromkeys(r["scenario"] for r in results):
        rows = [r for r in results if r["scenario"] == key]
        title = next((r["title"] for r in rows if "title" in r), key)
        lines += ["", f"({key}) {title}"]
        lines.append("  ".join(name.rjust(width) for name, width, _ in COLUMNS))
        for r in rows:
            if "skipped" in r or "error" in r:
                lines.append(f"{r['server']:>9}  {r.get('skipped') or 'FAILED: ' + r['error']}")
                continue
            values = (
                r["server"], r["deliveries_per_s"], r["server_cpu_us_per_delivery"], r["cpu_ratio"], r["p50_ms"],
                r["p99_ms"], r["p99_ratio"], r["max_ms"], r.get("rss_per_conn_kib"),
                "yes" if r["all_delivered"] else "NO", r["loadgen_cpu_percent"], r["redis_cpu_us_per_delivery"],
            )  # fmt: skip
            cells = [_cell(value, fmt) for value, (_, _, fmt) in zip(values, COLUMNS, strict=True)]
            if r["server_cpu_s"] < 0.2:  # under 20 clock ticks: a rough figure
                cells[2] = "~" + cells[2]
            cells = [cell.rjust(width) for cell, (_, width, _) in zip(cells, COLUMNS, strict=True)]
            line = "  ".join(cells)
            if (r["loadgen_cpu_percent"] or 0) > 85:
                line += "  [load generator near saturation]"
            if r["publisher"]["max_lag_ms"] > 100:
                line += f"  [publishes up to {r['publisher']['max_lag_ms'] / 1000:.1f} s late]"
            if not r["all_delivered"]:
                line += f"  [{r['deliveries']:,}/{r['expected']:,}, missing {r['missing']:,}, dup {r['duplicates']:,}"
                line += f", closed {r['closed_early']}, connect failures {r.get('connect_failures', 0)}"
                line += f", publish errors {r['publisher']['errors']}]"
            lines.append(line)
    return "\n".join(lines)


def targets(results: list[dict]) -> str:
    """The team's targets for the gateway, each checked against this run where its scenario ran."""
    by = {(r["scenario"], r["server"]): r for r in results if "skipped" not in r and "error" not in r}

    def value(scenario: str, server: str, key: str) -> float | None:
        return by.get((scenario, server), {}).get(key)

    def check(label: str, mine: float | None, limit: float, *, at_least: bool = False, unit: str = "x") -> str:
        if mine is None:
            return f"  {label}: not measured"
        ok = mine >= limit if at_least else mine <= limit
        sign = ">=" if at_least else "<="
        return f"  {label}: {mine:.2f}{unit} (target {sign} {limit}{unit}) {'met' if ok else 'MISSED'}"

    two, one = value("a", "gateway2", "deliveries_per_s"), value("a", "gateway1", "deliveries_per_s")
    delivered = value("b", "gateway1", "all_delivered")
    lines = [
        "targets (gateway1 against nchan1):",
        check("(a) CPU per delivery", value("a", "gateway1", "cpu_ratio"), 0.5),
        check("(c) CPU per delivery", value("c", "gateway1", "cpu_ratio"), 1.0),
        check("(c) p99 latency", value("c", "gateway1", "p99_ratio"), 1.0),
        check("(b) RSS per idle connection", value("b", "gateway1", "rss_per_conn_kib"), 10, unit=" KiB"),
        f"  (b) every event delivered on one process: {'not measured' if delivered is None else delivered}",
        check("(a) throughput of 2 workers over 1", two / one if two and one else None, 1.6, at_least=True),
    ]
    return "\n".join(lines)


def _cell(value: object, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def machine(redis_version: str) -> dict:
    def run(*command: str) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except OSError:
            return "unavailable"
        return (done.stdout + done.stderr).strip()

    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    versions = {}
    for package in ("uvicorn", "uvloop", "starlette", "redis", "hiredis", "sse-starlette", "httptools"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": redis_version,
        "nginx": run("nginx", "-v"),
        "nchan": run("dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-nchan"),
        "gateway_commit": run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD"),
        "gateway_uncommitted_changes": bool(run("git", "-C", str(REPO), "status", "--porcelain", "gateway")),
        "packages": versions,
    }


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def plot(results: list[dict], path: Path) -> bool:
    """p99 (solid) and p50 (dotted) latency against offered load, one line per server, from the paced runs."""
    points = [r for r in results if r.get("plot") and r.get("p99_ms") is not None]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    for server in dict.fromkeys(r["server"] for r in points):
        mine = sorted((r for r in points if r["server"] == server), key=lambda r: r["offered_per_s"])
        loads = [r["offered_per_s"] / 1000 for r in mine]
        (line,) = axes.plot(loads, [r["p99_ms"] for r in mine], marker="o", label=f"{server} p99")
        axes.plot(loads, [r["p50_ms"] for r in mine], linestyle=":", marker=".", color=line.get_color())
        for r, load in zip(mine, loads, strict=True):
            if (r["loadgen_cpu_percent"] or 0) > 85:
                line += "  [load generator near saturation]"
            if not r["all_delivered"]:
                axes.annotate("lost", (load, r["p99_ms"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_yscale("log")
    axes.set_xlabel("offered load: clients x messages/s on one channel, thousand deliveries/s")
    axes.set_ylabel("publish-to-receipt latency, ms (p99 solid, p50 dotted)")
    axes.set_title("Latency against load")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True
