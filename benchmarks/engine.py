"""`duplex bench engine`: the batched frame step (codec encode + LM + codec decode) for N sessions.

Baseline in the same run: N sessions stepped one after another at batch 1 (N x the batch-1 time), which is
what a one-session-per-process server would spend. `--backend both`: the PyTorch and the ONNX Runtime pools
stepped alternately, frame by frame, on the same input (neither gets a quieter machine), with their ratios.
"""

from __future__ import annotations

import statistics

import numpy as np
import torch

from benchmarks.timing import device_name, time_steps
from models.codec import FRAME_SIZE as FRAME
from streaming.stats import percentile

BUDGET_MS = 80.0


def _make_pool(bundle, n: int, backend: str, args):
    if backend == "onnx":
        from agent.config import config_from_args as agent_config
        from agent.onnx_backend import onnx_pool

        pool = onnx_pool(bundle, agent_config(args, max_sessions=n, backend="onnx", threads=args.threads))
    else:
        from models.lm import LMGenerator
        from streaming.slots import SlotPool

        pool = SlotPool(bundle.codec, LMGenerator(bundle.lm, bundle.sampling), n, bundle.files.input_noise_floor)
    for i in range(n):
        pool.add(i)
    return pool


def _time_pools(bundle, n: int, frames: int, backends: list[str], args) -> dict[str, list[float]]:
    """Each backend's pool stepped on the same frames, one backend after the other (with a pause between, so
    that one runtime's idle worker threads, which spin for a while after work, do not tax the other's steps);
    per backend the step times (ms)."""
    import time

    rng = np.random.default_rng(0)
    inputs = [(0.1 * rng.standard_normal((n, FRAME))).astype(np.float32) for _ in range(frames + 3)]
    times: dict[str, list[float]] = {}
    for b in backends:
        pool = _make_pool(bundle, n, b, args)
        time.sleep(0.5 if len(backends) > 1 else 0)
        # pool.step ends with a device->host copy, so each timed step is complete (and the next starts idle)
        times[b] = time_steps(pool.step, iter(inputs), desc=f"{b}, {n} sessions")
    return times


def _time_pool(bundle, n: int, frames: int, backend: str = "torch", args=None) -> list[float]:
    return _time_pools(bundle, n, frames, [backend], args)[backend]


def run_engine_bench(args) -> int:
    from agent.bundle import load_bundle
    from agent.registry import resolve

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve(args.model), device=args.device)
    print(f"device: {device_name()}  model: {bundle.name} ({bundle.files.folder})  frames per N: {args.frames}")
    backend = getattr(args, "backend", "torch")
    if backend == "both":
        return _compare_backends(bundle, args)
    if backend == "onnx":
        print(f"backend: ONNX Runtime, {args.threads or 1} thread(s)")
    results: dict[int, tuple[float, float]] = {}
    base = None
    for n in sorted(set(args.sessions)):
        ms = _time_pool(bundle, n, args.frames, backend, args)
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
            p99 = percentile(_time_pool(bundle, mid, max(10, args.frames // 2), backend, args), 0.99)
            print(f"  search N={mid:3d}: p99 {p99:7.2f} ms")
            lo, hi = (mid, hi) if p99 < BUDGET_MS else (lo, mid)
        ok.append(lo)
    best = max(ok) if ok else 0
    more = " (all measured N were real-time; try larger --sessions)" if ok and not bad else ""
    print(f"max sessions kept real-time (p99 step < 80 ms): {best}{more}")
    return 0


def _max_realtime(bundle, backend: str, args, start: int) -> int:
    """The largest N whose p99 step stays under the frame budget (doubling, then bisection)."""
    lo, hi, n = 0, None, max(1, start)
    while hi is None:
        p99 = percentile(_time_pool(bundle, n, max(10, args.frames // 2), backend, args), 0.99)
        print(f"    {backend} N={n:3d}: p99 {p99:7.2f} ms")
        if p99 < BUDGET_MS:
            lo, n = n, n * 2
        else:
            hi = n
        if n > 512:
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        p99 = percentile(_time_pool(bundle, mid, max(10, args.frames // 2), backend, args), 0.99)
        print(f"    {backend} N={mid:3d}: p99 {p99:7.2f} ms")
        lo, hi = (mid, hi) if p99 < BUDGET_MS else (lo, mid)
    return lo


def _compare_backends(bundle, args) -> int:
    threads = args.threads or torch.get_num_threads()
    q = f", {args.onnx_quantize}" if args.onnx_quantize else ""
    print(f"PyTorch eager (baseline, {threads} threads) vs ONNX Runtime{q} ({args.threads or 1} thread(s)), "
          "the same frames, one after the other per N")
    print(f"  {'N':>4s} {'torch median':>13s} {'onnx median':>12s} {'onnx speed-up':>14s} {'torch p99':>10s} "
          f"{'onnx p99':>9s}")
    for n in sorted(set(args.sessions)):
        ms = _time_pools(bundle, n, args.frames, ["torch", "onnx"], args)
        t, o = statistics.median(ms["torch"]), statistics.median(ms["onnx"])
        print(f"  {n:4d} {t:10.2f} ms {o:9.2f} ms {t / o:13.2f}x {percentile(ms['torch'], 0.99):7.2f} ms "
              f"{percentile(ms['onnx'], 0.99):6.2f} ms")
    if args.search:
        print("  sessions kept real time (p99 step < 80 ms):")
        best = {b: _max_realtime(bundle, b, args, 8) for b in ("torch", "onnx")}
        print(f"max sessions kept real-time: torch {best['torch']}, onnx {best['onnx']} "
              f"(onnx / torch {best['onnx'] / max(1, best['torch']):.2f}x)")
    return 0
