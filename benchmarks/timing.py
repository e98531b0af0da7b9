"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time

from streaming.stats import percentile


def time_steps(step, inputs, warmup: int = 3, desc: str | None = None) -> list[float]:
    """ms per `step(x)` for each x in `inputs` (made outside the timed region), the first `warmup` untimed."""
    from tqdm import tqdm

    ms = []
    for i, x in enumerate(tqdm(inputs, desc=desc, leave=False, disable=desc is None)):
        t0 = time.perf_counter()
        step(x)
        if i >= warmup:
            ms.append((time.perf_counter() - t0) * 1e3)
    return ms


def summary(ms: list[float]) -> str:
    return f"median {statistics.median(ms):7.2f} ms  p99 {percentile(ms, 0.99):7.2f} ms"


def device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
