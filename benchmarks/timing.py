"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def timed(run: Callable[[], Any], repeats: int = 3, warmup: bool = True) -> tuple[float, Any]:
    """Median wall time of ``run()`` over ``repeats`` calls (after one warm-up call that compiles,
    unless ``warmup`` is false), and the last call's result."""
    if warmup:
        run()
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def fmt(seconds: float) -> str:
    """Seconds in s, ms, us or ns."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.0f} us"
    return f"{seconds * 1e9:.0f} ns"
