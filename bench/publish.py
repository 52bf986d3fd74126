"""The publish path: publishes per second and CPU per publish, the gateway against Nchan in the same run.

    .venv/bin/python -m bench.publish                          # 3 rounds, 0 subscribers, single publishes
    .venv/bin/python -m bench.publish --subscribers 0,1000,10000
    .venv/bin/python -m bench.publish --batched                # the gateway's batch publish as well
    .venv/bin/python -m bench.publish --gateway-env SSE_GATEWAY_PUBLISH_PIPELINE=0   # a switch off
    .venv/bin/python -m bench.publish --variant unmerged:SSE_GATEWAY_PUBLISH_MERGE=0  # both, in the same rounds

Single publishes: wrk with 16 keep-alive connections posting a 64-byte body to one channel for ``--seconds``, against
one gateway process and one Nchan worker on the same Redis, logging off on both, rounds alternating. Each run reports
acknowledged publishes per second, the server's CPU per publish and Redis's CPU per publish (utime + stime from /proc).

Batched (``--batched``, the gateway only: Nchan has no batch publish): one client process posts NDJSON batches of
``--batch`` events to ``POST /publish`` over 4 connections, and the run reports events per second into Redis and CPU
per event; a subscriber on the channel must receive every event, or the run says how many it missed.

With ``--subscribers N`` each run first opens N SSE streams on the channel (raw sockets, in a child process that
reads and drops), so the figures include the fan-out. Read the ratios: the machine is shared by everything here.
"""

from __future__ import annotations

import argparse
import json
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.measure import CpuMeter, cpu_seconds
from bench.servers import Redis, Server, start, stop_all

BODY = "x" * 64
WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.body = "{BODY}"
wrk.headers["Content-Type"] = "text/plain"
"""


def run_wrk(url: str, seconds: float, connections: int, script: Path) -> tuple[int, int]:
    """(requests answered 2xx, requests answered otherwise) over the run."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return total - failed, failed


def hold_subscribers(server: Server, channel: str, count: int) -> subprocess.Popen[str] | None:
    """``count`` SSE streams of ``channel`` held open by a child process; None for none."""
    if count == 0:
        return None
    holder = subprocess.Popen(
        [sys.executable, "-m", "bench.holder", str(server.port), server.subscribe_path([channel]), str(count)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    line = holder.stdout.readline()  # "open N" once every stream has its response head
    if not line.startswith("open"):
        raise RuntimeError(f"the subscribers did not open: {line!r}")
    return holder


def single_round(server: Server, redis: Redis, args: argparse.Namespace, subscribers: int, script: Path) -> dict:
    channel = "p" + uuid.uuid4().hex[:8]
    holder = hold_subscribers(server, channel, subscribers)
    try:
        meter = CpuMeter(server.process.pid)
        meter.start()
        redis_before = cpu_seconds([redis.process.pid])
        started = time.monotonic()
        acked, failed = run_wrk(
            f"http://127.0.0.1:{server.port}{server.publish_path(channel)}", args.seconds, args.connections, script
        )
        elapsed = time.monotonic() - started
        server_cpu = meter.stop()
        redis_cpu = cpu_seconds([redis.process.pid]) - redis_before
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    return {
        "server": server.name,
        "subscribers": subscribers,
        "publishes_per_s": acked / elapsed,
        "failed": failed,
        "server_us": server_cpu / max(acked, 1) * 1e6,
        "redis_us": redis_cpu / max(acked, 1) * 1e6,
    }


def batched_round(server: Server, redis: Redis, args: argparse.Namespace, subscribers: int) -> dict:
    channel = "b" + uuid.uuid4().hex[:8]
    holder = hold_subscribers(server, channel, subscribers)
    counter = subprocess.Popen(
        [sys.executable, "-m", "bench.holder", str(server.port), server.subscribe_path([channel]), "1", "--count"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert counter.stdout is not None
    counter.stdout.readline()
    try:
        meter = CpuMeter(server.process.pid)
        meter.start()
        redis_before = cpu_seconds([redis.process.pid])
        result = subprocess.run(
            [
                sys.executable, "-m", "bench.batch_publisher", str(server.port), channel,
                str(args.batch), str(args.batches), "4",
            ],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        published = json.loads(result.stdout)
        server_cpu = meter.stop()
        redis_cpu = cpu_seconds([redis.process.pid]) - redis_before
        received = _received(counter, published["acknowledged"], timeout=30)
    finally:
        for process in (holder, counter):
            if process is not None:
                process.kill()
                process.wait()
    acked = published["acknowledged"]
    return {
        "server": server.name + " batched",
        "subscribers": subscribers,
        "publishes_per_s": acked / published["seconds"],
        "failed": published["failed"],
        "server_us": server_cpu / max(acked, 1) * 1e6,
        "redis_us": redis_cpu / max(acked, 1) * 1e6,
        "missed": acked - received,
    }


def _received(counter: subprocess.Popen[str], expected: int, timeout: float) -> int:
    """Events the counting subscriber reports, once it has ``expected`` or ``timeout`` passed."""
    assert counter.stdout is not None
    deadline = time.monotonic() + timeout
    received = 0
    while received < expected and time.monotonic() < deadline:
        ready, _, _ = select.select([counter.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = counter.stdout.readline()
        if not line:
            break
        if line.startswith("events "):
            received = int(line.split()[1])
    return received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--subscribers", default="0", help="comma-separated subscriber counts, e.g. 0,1000,10000")
    parser.add_argument("--batched", action="store_true", help="also the gateway's batch publish")
    parser.add_argument("--batch", type=int, default=1000, help="events per batch request")
    parser.add_argument("--batches", type=int, default=300, help="batch requests per run")
    parser.add_argument("--gateway-env", action="append", default=[], help="KEY=VALUE for the gateway (a switch)")
    parser.add_argument("--servers", default="gateway1,nchan1")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="LABEL:KEY=VALUE[,KEY=VALUE]: one more gateway1 with those settings, in the same rounds (an A/B)",
    )
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.gateway_env)
    variants: list[tuple[str, dict[str, str]]] = []
    for variant in args.variant:  # checked before any server starts
        label, _, settings = variant.partition(":")
        if not label or any("=" not in s for s in settings.split(",")) or label in dict(variants):
            parser.error(f"--variant {variant!r}: give LABEL:KEY=VALUE[,KEY=VALUE], each label once")
        variants.append((label, dict(s.split("=", 1) for s in settings.split(","))))
    workdir = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    redis = Redis(workdir)
    servers = [start(name, redis, workdir, extra_env) for name in args.servers.split(",")]
    for label, settings in variants:
        server = start("gateway1", redis, workdir, {**extra_env, **settings})
        server.name = f"gateway1-{label}"
        servers.append(server)
    results: list[dict] = []
    try:
        for subscribers in [int(n) for n in args.subscribers.split(",")]:
            for round_number in range(args.rounds):
                for server in servers if round_number % 2 == 0 else reversed(servers):
                    results.append(single_round(server, redis, args, subscribers, script))
                    print(_line(results[-1]), flush=True)
                if args.batched:
                    for server in [s for s in servers if s.kind == "gateway"]:
                        results.append(batched_round(server, redis, args, subscribers))
                        print(_line(results[-1]), flush=True)
    finally:
        for server in servers:
            server.stop()
        redis.stop()
        stop_all()
    print()
    _summary(results)


def _line(result: dict) -> str:
    missed = f", missed {result['missed']}" if "missed" in result else ""
    return (
        f"{result['server']:>16} subs={result['subscribers']:>5}: {result['publishes_per_s']:8.0f}/s, "
        f"server {result['server_us']:6.1f} µs, redis {result['redis_us']:5.1f} µs per publish, "
        f"failed {result['failed']}{missed}"
    )


def _summary(results: list[dict]) -> None:
    """Medians per server and subscriber count, and the gateway's ratios to Nchan."""
    keys = sorted({(r["server"], r["subscribers"]) for r in results}, key=lambda k: (k[1], k[0]))
    medians = {}
    for key in keys:
        runs = [r for r in results if (r["server"], r["subscribers"]) == key]
        medians[key] = {m: statistics.median(r[m] for r in runs) for m in ("publishes_per_s", "server_us", "redis_us")}
        print(f"median {_line({**runs[0], **medians[key]})}")
    for (name, subscribers), median in medians.items():
        nchan = medians.get(("nchan1", subscribers))
        if name.startswith("gateway") and nchan:
            rate, server, redis = (median[m] / nchan[m] for m in ("publishes_per_s", "server_us", "redis_us"))
            print(
                f"{name} / nchan1, {subscribers} subscribers: publishes/s {rate:.2f}x, "
                f"server CPU per publish {server:.2f}x, Redis CPU per publish {redis:.2f}x"
            )


if __name__ == "__main__":
    main()
