"""Where a batch-1 LM frame step spends its GPU time: kernel counts and times per kernel name.

`python -m benchmarks.gpu_profile [--config moshi_7b] [--compile]` builds the random-weight model of
`duplex bench gpu`, profiles one eager frame step (every kernel launched, grouped by name) and times the
CUDA-graph replay. The gap between the summed kernel time and the replay time is launch overhead; the gap
between the summed kernel time and the floor is kernels reading slower than the HBM allows.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch


def profile_step(step, label: str, top: int = 18) -> None:
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    per_name: dict[str, list[float]] = defaultdict(list)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per_name[ev.name].append(ev.device_time)
    total = sum(sum(v) for v in per_name.values())
    count = sum(len(v) for v in per_name.values())
    print(f"[{label}] {count} kernels, summed kernel time {total / 1e3:.2f} ms")
    rows = sorted(per_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    for name, times in rows:
        print(f"   {sum(times) / 1e3:7.3f} ms  {len(times):5d}x  {name[:110]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="moshi_7b", choices=["moshi_7b", "hybrid_7b"])
    parser.add_argument("--compile", action="store_true", help="also try torch.compile on the layers")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: the profile needs a GPU (`python -m benchmarks.launches` counts launches "
              "on any machine)")
        return 0
    from benchmarks.gpu import _cuda_time, random_lm
    from models.lm import LMGenerator, SamplingConfig
    from models.lm.cuda_graph import GraphedGenerator

    model = random_lm(args.config)
    gen = LMGenerator(model, SamplingConfig())
    codes = torch.randint(0, model.cfg.card, (1, model.cfg.user_streams), device="cuda")

    def measure(label: str) -> None:
        state = gen.init_state(1)
        with torch.no_grad():
            profile_step(lambda: gen.step(codes, state), label)
            t0 = time.perf_counter()
            graphed = GraphedGenerator(gen, gen.init_state(1))
            graphed.step(codes)
            torch.cuda.synchronize()
            capture = time.perf_counter() - t0
            ms = _cuda_time(lambda: graphed.step(codes), iters=50)
        print(f"[{label}] graph replay median {statistics.median(ms):.2f} ms (capture {capture:.1f} s)", flush=True)

    measure("current")
    if args.compile:
        torch._dynamo.config.cache_size_limit = 256
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = 256
        t0 = time.perf_counter()
        for layer in [*model.transformer.layers, *model.depformer.layers]:
            for name in ("forward", "forward_fused"):  # the GPU path steps through forward_fused
                if hasattr(layer, name):
                    setattr(layer, name, torch.compile(getattr(layer, name), dynamic=False))
        try:
            measure("torch.compile per layer")
        except Exception as exc:  # noqa: BLE001 - an experiment: report and go on
            print(f"torch.compile failed: {type(exc).__name__}: {exc}"[:2000])
        print(f"(compile + measure {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
