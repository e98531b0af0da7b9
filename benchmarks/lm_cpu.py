"""`duplex bench lm`: per-frame LM step on the CPU for a ~100M-parameter config.

Three comparisons, each measured in the same run:
1. ours vs the reference `moshi==0.2.13` LMGen, same weights (all-attention), frames interleaved;
2. our hybrid pattern vs our all-attention pattern at the same size;
3. streaming-state memory per session over `--minutes` of frames (sampled each simulated minute).
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time

import torch
from tqdm import tqdm

from benchmarks.reference import import_reference
from benchmarks.timing import device_name, summary, time_steps

FRAME_RATE = 12.5


def _reference_lm_100m(loaders, cfg):
    kwargs = dict(loaders._lm_kwargs, dim=cfg.dim, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
                  hidden_scale=cfg.hidden_scale, context=cfg.context, text_card=cfg.text_card, card=cfg.card,
                  n_q=cfg.n_q, dep_q=cfg.dep_q, delays=list(cfg.delays), depformer_dim=cfg.depformer_dim,
                  depformer_dim_feedforward=cfg.depformer_dim_feedforward,
                  depformer_num_heads=cfg.depformer_num_heads, depformer_num_layers=cfg.depformer_num_layers,
                  depformer_context=cfg.dep_q)
    return loaders.get_moshi_lm(None, lm_kwargs=kwargs, device="cpu", dtype=torch.float32).eval()


def _params(model: torch.nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return f"{total / 1e6:.0f}M params ({(total - tables) / 1e6:.0f}M outside embedding tables)"


def _compare_with_reference(frames: int, loaders) -> None:
    from moshi.models import LMGen

    from models.lm import LMConfig, LMGenerator, LMModel, load_lm_state_dict

    cfg = LMConfig.small_100m()
    torch.manual_seed(0)
    ref = _reference_lm_100m(loaders, cfg)
    ours = load_lm_state_dict(LMModel(cfg).eval(), ref.state_dict(), "reference LM")
    print(f"[1] all-attention, {_params(ours)}: ours vs reference moshi==0.2.13 LMGen (same weights)")
    gen = LMGenerator(ours)
    state = gen.init_state(1)
    ref_gen = LMGen(ref)
    codes = torch.randint(0, cfg.card, (1, cfg.user_streams, frames + 3))
    ms: dict[str, list[float]] = {"ours": [], "reference": []}
    with torch.inference_mode(), ref_gen.streaming(1):
        for t in tqdm(range(frames + 3), desc="ours vs reference", leave=False):
            t0 = time.perf_counter()
            gen.step(codes[:, :, t], state)
            t1 = time.perf_counter()
            ref_gen.step(codes[:, :, t:t + 1])
            t2 = time.perf_counter()
            if t >= 3:
                ms["ours"].append((t1 - t0) * 1e3)
                ms["reference"].append((t2 - t1) * 1e3)
    for name, v in ms.items():
        print(f"    {name:10s} per frame: {summary(v)}")
    ratio = statistics.median(ms["reference"]) / statistics.median(ms["ours"])
    print(f"    speed-up vs reference (median): {ratio:.2f}x (goal > 1)")


def _step_times(gen, frames: int, desc: str) -> list[float]:
    cfg = gen.cfg
    state = gen.init_state(1)
    codes = torch.randint(0, cfg.card, (1, cfg.user_streams, frames + 3))
    with torch.inference_mode():
        return time_steps(lambda c: gen.step(c, state), (codes[:, :, t] for t in range(frames + 3)),
                          desc=desc)


def _hybrid_vs_attention(frames: int, pattern: str) -> None:
    from models.lm import LMConfig, LMGenerator, LMModel

    print(f"[2] same size, hybrid pattern {pattern!r} vs all-attention (ours)")
    medians = {}
    # Interleave whole runs (attention, hybrid, attention, hybrid) so load drift hits both.
    gens = {}
    for name, pat in (("all-attention", None), (f"hybrid {pattern}", pattern)):
        torch.manual_seed(0)
        gens[name] = LMGenerator(LMModel(LMConfig.small_100m(pat)).eval())
    times: dict[str, list[float]] = {name: [] for name in gens}
    for _ in range(2):
        for name, gen in gens.items():
            times[name] += _step_times(gen, frames // 2, name)
    for name, v in times.items():
        medians[name] = statistics.median(v)
        state_mb = gens[name].init_state(1).nbytes() / 1e6
        print(f"    {name:18s} {_params(gens[name].model)}\n    {'':18s} per frame: {summary(v)}  "
              f"state/session {state_mb:6.1f} MB")
    a, h = medians.values()
    print(f"    hybrid speed-up vs all-attention (median): {a / h:.2f}x")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6


def _memory_over_time(minutes: float, pattern: str) -> None:
    from models.lm import LMConfig, LMGenerator, LMModel

    frames = int(minutes * 60 * FRAME_RATE)
    print(f"[3] memory per session over {minutes:g} min ({frames} frames), hybrid {pattern!r}")
    torch.manual_seed(0)
    gen = LMGenerator(LMModel(LMConfig.small_100m(pattern)).eval())
    state = gen.init_state(1)
    codes = torch.randint(0, gen.cfg.card, (1, gen.cfg.user_streams))
    marks = {int(m * 60 * FRAME_RATE) for m in range(1, int(minutes) + 1)} | {frames}
    rows = [(0.0, state.nbytes() / 1e6, _rss_mb())]
    with torch.inference_mode(), contextlib.closing(tqdm(total=frames, desc="10-minute session", leave=False)) as bar:
        for t in range(1, frames + 1):
            gen.step(codes, state)
            bar.update()
            if t in marks:
                rows.append((t / FRAME_RATE / 60, state.nbytes() / 1e6, _rss_mb()))
    for m, state_mb, rss in rows:
        print(f"    after {m:5.1f} min: streaming state {state_mb:7.2f} MB   process RSS {rss:8.1f} MB")
    growth = rows[-1][1] - rows[0][1]
    rss_growth = rows[-1][2] - rows[1][2] if len(rows) > 2 else 0.0
    print(f"    state growth: {growth:+.2f} MB; RSS growth after minute 1: {rss_growth:+.1f} MB (flat = bounded)")


def run_lm_cpu_bench(args) -> int:
    torch.set_num_threads(args.threads)
    print(f"device: {device_name()}")
    loaders = None if args.no_reference else import_reference()
    if loaders is None:
        print("[1] skipped: reference package not installed (pip install --no-deps moshi==0.2.13)")
    else:
        _compare_with_reference(args.frames, loaders)
    _hybrid_vs_attention(args.frames, args.pattern)
    if args.minutes > 0:
        _memory_over_time(args.minutes, args.pattern)
    return 0
