"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics


def percentile(ms: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]."""
    s = sorted(ms)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def summary(ms: list[float]) -> str:
    return f"median {statistics.median(ms):7.2f} ms  p99 {percentile(ms, 0.99):7.2f} ms"


def device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
