"""Run the benchmark: ``python -m bench.run [--quick] [--only a,c] [--servers gateway1,nchan1]``.

Every selected scenario runs against every selected server in turn, each on a freshly started server, all against
one Redis started for the run. It prints a table, and writes ``bench/results/<timestamp>.json`` and
``bench/results/<timestamp>-latency.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

from bench import report, runner, scenarios, servers

SERVERS = ("gateway1", "gateway2", "nchan1", "nchan2", "naive")
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down scenarios, a smoke run of about 2 minutes")
    parser.add_argument("--only", help="scenarios to run, e.g. a,c (c brings its other paces for the plot)")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"servers to run (default {','.join(SERVERS)})")
    parser.add_argument(
        "--loadgen-processes",
        type=int,
        help="split every scenario's clients over this many load generator processes (default 1)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each scenario this many times; the table shows, "
        "for each server, the run with the median CPU per delivery (default 1)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        help="KEY=VALUE for the gateways, a switch such as SSE_GATEWAY_WRITE_PATH=stepped (repeatable)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if unknown := set(names) - set(SERVERS):
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    if any(n.startswith("nchan") for n in names) and not Path(servers.NCHAN_MODULE).exists():
        parser.error("Nchan is missing: apt-get install -y nginx libnginx-mod-nchan")
    if bad := [item for item in args.gateway_env if "=" not in item]:
        parser.error(f"--gateway-env takes KEY=VALUE, not {bad[0]}")
    gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    chosen = scenarios.select(scenarios.quick() if args.quick else scenarios.full(), args.only)
    if args.loadgen_processes:
        chosen = [dataclasses.replace(s, loadgen_processes=args.loadgen_processes) for s in chosen]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers and load generators
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    workdir = RESULTS / "tmp" / stamp  # server logs and configs, kept for a look after the run (not committed)
    workdir.mkdir(parents=True)
    results: list[dict] = []
    started = time.monotonic()
    redis = None
    try:
        redis = servers.Redis(workdir)
        for scenario in chosen:
            for repeat in range(args.repeat):
                for name in names:
                    result = _one(
                        name, scenario, redis, workdir, idle_timeout=3.0 if args.quick else 5.0, gateway_env=gateway_env
                    )
                    results.append({**result, "repeat": repeat})
    except KeyboardInterrupt:
        print("\ninterrupted: reporting what finished", file=sys.stderr)
    finally:
        servers.stop_all()
    shown = report.with_ratios(report.representatives(results))
    print(report.table(shown))
    print("\n" + report.targets(shown))
    payload = {
        "started": stamp,
        "mode": "quick" if args.quick else "full",
        "seconds": round(time.monotonic() - started, 1),
        "machine": report.machine(redis.version if redis else "unknown"),
        "notes": "server CPU counts every process of the server (uvicorn master and workers, nginx master and "
        "workers), not Redis, which is reported apart; RSS per idle connection is the server's RSS growth over "
        "the open, warmed-up connections divided by their number",
        "repeat": args.repeat,
        "gateway_env": gateway_env,
        "results": shown,
        "all_runs": results if args.repeat > 1 else None,
    }
    json_path = RESULTS / f"{stamp}.json"
    report.write_json(json_path, payload)
    plot_path = RESULTS / f"{stamp}-latency.png"
    print(f"\nwrote {json_path}" + (f" and {plot_path}" if report.plot(shown, plot_path) else ""))
    print(f"server logs in {workdir}")
    return 0


def _one(
    name: str,
    scenario: scenarios.Scenario,
    redis: servers.Redis,
    workdir: Path,
    *,
    idle_timeout: float,
    gateway_env: dict[str, str],
) -> dict:
    print(f"[{time.strftime('%H:%M:%S')}] ({scenario.key}) {name} ...", file=sys.stderr, flush=True)
    server = None
    try:
        server = servers.start(name, redis, workdir, gateway_env)
        result = runner.run(server, scenario, redis, workdir, idle_timeout=idle_timeout)
    except (RuntimeError, TimeoutError, OSError) as exc:
        traceback.print_exc()
        result = {"scenario": scenario.key, "title": scenario.title, "server": name, "error": str(exc)[:300]}
    finally:
        if server is not None:
            server.stop()
        with contextlib.suppress(OSError):
            redis.command("FLUSHALL")
    return result


if __name__ == "__main__":
    sys.exit(main())
