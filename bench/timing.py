"""Timing helpers for the benchmarks that measure the gateway's own steps alone, in one process."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any


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
