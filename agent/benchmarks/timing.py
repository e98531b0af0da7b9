"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_calls(fn: Callable[[int], object], n: int, warmup: int = 3) -> list[float]:
    """Call fn(i) for i in range(warmup + n); return the last n durations in milliseconds."""
    out = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        fn(i)
        dt = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            out.append(dt)
    return out


def summary(ms: list[float]) -> str:
    ms_sorted = sorted(ms)
    p99 = ms_sorted[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return f"median {statistics.median(ms):7.2f} ms  p99 {p99:7.2f} ms"


def device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
