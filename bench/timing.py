"""Timing helpers for the benchmarks that measure the gateway's own steps alone, in one process."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench.servers import Redis


def run_now(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that finishes without waiting, as the steps measured this way do."""
    try:
        coroutine.send(None)
    except StopIteration as end:
        return end.value
    coroutine.close()
    raise RuntimeError("the step waited: it is not the path being measured")


def best_us(step: Callable[[], object], times: int, rounds: int = 5) -> float:
    """Microseconds per call of ``step``, the best of ``rounds`` rounds of ``times`` calls."""
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(times):
            step()
        best = min(best, (time.perf_counter() - began) / times * 1e6)
    return best


def measured_beside_redis(
    measure: Callable[[str, int], Coroutine[Any, Any, list[tuple[str, float]]]],
    times: int,
    run: Callable[[Coroutine[Any, Any, list[tuple[str, float]]]], list[tuple[str, float]]] = asyncio.run,
) -> list[tuple[str, float]]:
    """``measure(redis_url, times)`` run by ``run`` (asyncio.run, or uvloop.run) beside a Redis of its own."""
    with tempfile.TemporaryDirectory() as workdir:
        redis = Redis(Path(workdir))
        try:
            return run(measure(redis.url, times))
        finally:
            redis.stop()


def print_steps(results: list[tuple[str, float]], per: str, times: int) -> None:
    width = max(len(name) for name, _ in results)
    print(f"{'step'.ljust(width)}  µs per {per} (best of 5 rounds of {times:,})")
    for name, us in results:
        print(f"{name.ljust(width)}  {us:6.2f}")
