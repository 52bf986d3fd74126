"""Cycle through every fault against real processes for a few minutes, and print the invariant checker's counts.

    python scripts/faults.py --minutes 3 --subscribers 200 --channels 10

Each run starts a fresh workload on new channels (subscribers resuming like browsers, one publisher per channel)
against one Redis with AOF and a gateway configured for the fault, injects the fault, lets everyone catch up, and
checks: no loss, no duplicate, no reordering, gaps exactly where the buffer was trimmed. Everything listens on
loopback only, and both processes are stopped on exit, Ctrl-C or SIGTERM included. The exit status is 1 if any
run broke the promise or a fault's own expectation.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fault_scenarios import FAULTS, Outcome, Pace, run_fault  # noqa: E402
from tests.invariants import Report  # noqa: E402
from tests.workload import Rig  # noqa: E402

PACE = Pace(before=4.0, after=4.0, settle=60.0, outage=3.0, stall_rounds=40, trim_burst=250, misbehaving=8)
# Redis is paused alternately for 5 s (around the gateway's socket timeout) and 12 s (past the 10 s after which the
# gateway drops its silent Pub/Sub connection and reconnects).
PAUSES = (5.0, 12.0)
COLUMNS = (
    "published", "unacknowledged", "delivered", "unacked_delivered",
    "lost", "duplicated", "reordered", "gaps", "gapped",
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="run length; the fault in progress finishes")
    parser.add_argument("--subscribers", type=int, default=200, help="subscribers per run")
    parser.add_argument("--channels", type=int, default=10, help="channels per run")
    parser.add_argument("--rate", type=float, default=100.0, help="publishes per second, over all channels")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, from: {', '.join(FAULTS)}")
    args = parser.parse_args(argv)
    args.faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    if unknown := [name for name in args.faults if name not in FAULTS]:
        parser.error(f"unknown faults: {', '.join(unknown)}")
    if args.subscribers < 1 or args.channels < 1 or args.rate <= 0 or args.minutes <= 0:
        parser.error("--subscribers, --channels, --rate and --minutes must be positive")
    return args


async def run(args: argparse.Namespace) -> list[tuple[Outcome, float]]:
    rig = Rig()
    atexit.register(rig.stop_now)  # a last resort; the finally below is the normal path
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    loop.add_signal_handler(signal.SIGTERM, main.cancel)
    outcomes: list[tuple[Outcome, float]] = []
    await rig.start()
    try:
        deadline = time.monotonic() + args.minutes * 60
        # Bounded in count as well as in time: no fault runs shorter than a few seconds.
        for number in range(int(args.minutes * 60 / 3) + 1):
            if outcomes and time.monotonic() >= deadline:
                break
            name = args.faults[number % len(args.faults)]
            pauses_so_far = sum(outcome.fault == "redis_paused" for outcome, _ in outcomes)
            pace = replace(PACE, pause=PAUSES[pauses_so_far % len(PAUSES)])
            started = time.monotonic()
            outcome = await run_fault(
                FAULTS[name], rig, channels=args.channels, subscribers=args.subscribers, rate=args.rate, pace=pace
            )
            outcomes.append((outcome, time.monotonic() - started))
            status = "ok" if outcome.ok else "BROKEN"
            print(f"[{time.strftime('%H:%M:%S')}] {status} {time.monotonic() - started:5.1f}s {outcome.summary()}")
            sys.stdout.flush()
    finally:
        await rig.stop()
    return outcomes


def table(outcomes: list[tuple[Outcome, float]]) -> str:
    rows: dict[str, tuple[int, Report, int, float]] = {}
    for outcome, seconds in outcomes:
        runs, report, failures, total_seconds = rows.get(outcome.fault, (0, Report(), 0, 0.0))
        rows[outcome.fault] = (
            runs + 1,
            report + outcome.report,
            failures + len(outcome.failures),
            total_seconds + seconds,
        )
    everything = (
        sum(r[0] for r in rows.values()),
        sum((r[1] for r in rows.values()), Report()),
        sum(r[2] for r in rows.values()),
        sum(r[3] for r in rows.values()),
    )
    header = ["fault", "runs", *COLUMNS, "other errors", "fault checks failed", "seconds"]
    lines = []
    for name, (runs, report, failures, seconds) in [*rows.items(), ("TOTAL", everything)]:
        others = report.bad_gaps + report.unexpected + report.mismatched + report.bad_cursors + report.bad_streams
        lines.append([name, runs, *(getattr(report, column) for column in COLUMNS), others, failures, round(seconds)])
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    render = ["  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)) for row in lines]
    rule = "  ".join("-" * width for width in widths)
    head = "  ".join(name.rjust(width) for name, width in zip(header, widths, strict=True))
    return "\n".join([head, rule, *render[:-1], rule, render[-1]])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"faults: {', '.join(args.faults)}; {args.minutes:g} min, {args.subscribers} subscribers, "
        f"{args.channels} channels, {args.rate:g} publishes/s"
    )
    try:
        outcomes = asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; processes stopped")
        return 130
    print()
    print(table(outcomes))
    broken = [outcome for outcome, _ in outcomes if not outcome.ok]
    for outcome in broken:
        print(f"\nBROKEN: {outcome.summary()}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
