"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics

from streaming.stats import percentile


def summary(ms: list[float]) -> str:
    return f"median {statistics.median(ms):7.2f} ms  p99 {percentile(ms, 0.99):7.2f} ms"


def device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
