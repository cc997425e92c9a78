"""Timing primitives shared by every measurement: timed calls with warm-up and a budget, the
summary statistics of a list of times, and a closure that cycles through input batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def time_calls(fn: Callable[[], Any], warmup: int, iterations: int, max_seconds: float | None = None) -> list[float]:
    """Wall time of `iterations` calls after `warmup` untimed ones; with `max_seconds`, stop
    early once the budget is spent (at least 3 timed calls, so percentiles mean something)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and len(times) >= 3 and time.perf_counter() - start > max_seconds:
            break
    return times


def summarize(times: list[float], batch: int) -> dict[str, float]:
    ms = np.asarray(times) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "throughput_per_s": float(batch / (ms.mean() / 1e3)),
        "iterations": len(ms),
    }


def cycle(answer: Callable[[list[str]], Any], batches: list[list[str]]) -> Callable[[], Any]:
    """A no-argument call that answers the next batch each time, round and round."""
    state = {"i": 0}

    def call() -> Any:
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        return answer(batch)

    return call
