"""`duplex bench engine`: the batched frame step (codec encode + LM + codec decode) for N sessions.

Baseline in the same run: N sessions stepped one after another at batch 1 (N x the batch-1 time), which is
what a one-session-per-process server would spend.
"""

from __future__ import annotations

import statistics

import numpy as np
import torch

from agent.benchmarks.timing import device_name, time_steps
from models.codec import FRAME_SIZE as FRAME
from streaming.stats import percentile

BUDGET_MS = 80.0


def _time_pool(bundle, n: int, frames: int) -> list[float]:
    from models.lm import LMGenerator
    from streaming.slots import SlotPool

    pool = SlotPool(bundle.codec, LMGenerator(bundle.lm, bundle.sampling), n, bundle.files.input_noise_floor)
    for i in range(n):
        pool.add(i)
    rng = np.random.default_rng(0)
    batches = ((0.1 * rng.standard_normal((n, FRAME))).astype(np.float32) for _ in range(frames + 3))
    # pool.step ends with a device->host copy, so each timed step is complete (and the next starts idle)
    return time_steps(pool.step, batches, desc=f"{n} sessions")


def run_engine_bench(args) -> int:
    from agent.bundle import load_bundle
    from agent.registry import resolve

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve(args.model), device=args.device)
    print(f"device: {device_name()}  model: {bundle.name} ({bundle.files.folder})  frames per N: {args.frames}")
    results: dict[int, tuple[float, float]] = {}
    base = None
    for n in sorted(set(args.sessions)):
        ms = _time_pool(bundle, n, args.frames)
        med, p99 = statistics.median(ms), percentile(ms, 0.99)
        results[n] = (med, p99)
        base = base if base is not None else med / n
        print(f"  N={n:3d}: step median {med:7.2f} ms  p99 {p99:7.2f} ms  per session {med / n:6.2f} ms  "
              f"batched speed-up vs one-at-a-time {base * n / med:5.2f}x  real-time (p99 < 80 ms): {p99 < BUDGET_MS}")
    ok = [n for n, (_, p99) in results.items() if p99 < BUDGET_MS]
    bad = [n for n, (_, p99) in results.items() if p99 >= BUDGET_MS]
    if ok and bad and args.search:
        lo, hi = max(ok), min((n for n in bad if n > max(ok)), default=None)
        while hi is not None and hi - lo > 1:
            mid = (lo + hi) // 2
            p99 = percentile(_time_pool(bundle, mid, max(10, args.frames // 2)), 0.99)
            print(f"  search N={mid:3d}: p99 {p99:7.2f} ms")
            lo, hi = (mid, hi) if p99 < BUDGET_MS else (lo, mid)
        ok.append(lo)
    best = max(ok) if ok else 0
    more = " (all measured N were real-time; try larger --sessions)" if ok and not bad else ""
    print(f"max sessions kept real-time (p99 step < 80 ms): {best}{more}")
    return 0
