"""`duplex bench gpu`: fused Mamba2 step vs its PyTorch reference, and full LM frame steps on a GPU.

Prints ratios against named baselines measured in the same run (the PyTorch reference path, and kyutai's
`moshi` package with its CUDA graphs when installed) plus the physical floor: weight bytes read per
frame divided by the GPU's measured copy bandwidth.
"""

from __future__ import annotations

import statistics

import torch

from benchmarks.timing import percentile


def _cuda_time(fn, iters: int = 20, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return out


def copy_bandwidth() -> float:
    """Measured device-to-device bandwidth in bytes/s (read + write)."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = statistics.median(_cuda_time(lambda: y.copy_(x), iters=10))
    return 2 * x.numel() / (ms / 1e3)


def bench_mamba_layer(batches=(1, 64, 256)) -> None:
    from models.kernels.mamba2_triton import mamba2_step_fused
    from models.lm.config import LMConfig
    from models.lm.mamba2 import Mamba2Mixer

    cfg = LMConfig.hybrid_7b()
    mixer = Mamba2Mixer(cfg.dim, cfg.mamba).cuda().to(torch.bfloat16).eval()
    print(f"Mamba2 mixer step, dim {cfg.dim}, heads {mixer.nheads}x{cfg.mamba.headdim}, d_state "
          f"{cfg.mamba.d_state}, groups {cfg.mamba.ngroups}, bf16 weights, fp32 state")
    for b in batches:
        u = torch.randn(b, 1, cfg.dim, device="cuda", dtype=torch.bfloat16)
        state = mixer.init_state(b)
        conv_pool, ssm_pool = state.conv.clone(), state.ssm.clone()
        slots = torch.arange(b, dtype=torch.int32, device="cuda")
        with torch.no_grad():
            mixer.use_fused = False  # the PyTorch reference path
            ref = _cuda_time(lambda u=u, state=state: mixer(u, state))
            mixer.use_fused = True
            fused = _cuda_time(lambda u=u, c=conv_pool, s=ssm_pool, i=slots: mamba2_step_fused(mixer, u[:, 0], c, s, i))
        r, f = statistics.median(ref), statistics.median(fused)
        print(f"  batch {b:4d}: reference PyTorch {r:7.3f} ms  fused Triton {f:7.3f} ms  speed-up {r / f:5.2f}x")


def _attention_step_ms(batch: int, context: int, heads: int, head_dim: int) -> tuple[float, float, int]:
    """(SDPA alone, our whole step) in ms per call, and the k/v bytes one step reads, over a full ring."""
    import torch.nn.functional as F

    from models.attention import KVCacheState
    from models.kernels import time_in_graph
    from models.kernels.attention_triton import decode_attention

    cache = KVCacheState.create(batch, heads, head_dim, context, 1, device="cuda", dtype=torch.bfloat16)
    cache.keys.normal_()
    cache.values.normal_()
    cache.positions.copy_(torch.arange(context, device="cuda"))
    cache.offset.fill_(context)
    q, k, v = (torch.randn(batch, heads, 1, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    mask = torch.zeros(batch, 1, 1, context, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():  # each inside a CUDA graph, as inside the frame step's graph
        sdpa = time_in_graph(lambda: F.scaled_dot_product_attention(q, cache.keys, cache.values, attn_mask=mask),
                             repeat=32)
        ours = time_in_graph(lambda: decode_attention(q, k, v, cache, context, 10_000.0), repeat=32)
    return sdpa, ours, 2 * cache.keys.numel() * 2


def bench_attention_step(batches=(1, 16, 64), context: int = 3000, heads: int = 32, head_dim: int = 128) -> None:
    """One attention layer's frame step over a full 3000-entry ring (Moshi 7B's shape): our one-query kernel
    (rotary, ring append, window test, split reads, merge) vs SDPA alone over the ring with a ready mask."""
    bw = copy_bandwidth()
    print(f"attention step, {heads} heads x {head_dim}, ring {context} full, bf16, per call inside a CUDA graph")
    for b in batches:
        sdpa, ours, kv_bytes = _attention_step_ms(b, context, heads, head_dim)
        print(f"  batch {b:3d}: SDPA alone {sdpa:7.3f} ms  ours (whole step) {ours:7.3f} ms  ratio "
              f"{ours / sdpa:5.2f}x  floor (k/v bytes / bandwidth) {kv_bytes / bw * 1e3:6.3f} ms")


def print_gemv_choices() -> None:
    """Which batch-1 GEMVs run with the op before them folded in: each shape was timed both ways when first seen."""
    from models.kernels.gemv_triton import timings

    for (kind, shape, *_), (fused, separate) in sorted(timings().items(), key=str):
        what = "add + RMSNorm -> GEMV" if kind == "norm" else "SiLU gating -> GEMV"
        print(f"  {what} {shape[0]}x{shape[1]}: fused {fused * 1e3:6.1f} us  separate {separate * 1e3:6.1f} us  "
              f"-> {'fused' if fused < separate else 'separate (cuBLAS)'}")


def random_lm(config: str):
    """The 7B-class config with random bf16 weights on the GPU (no checkpoint needed for timing)."""
    from models.lm import LMConfig, LMModel

    cfg = LMConfig.moshi_7b() if config == "moshi_7b" else LMConfig.hybrid_7b()
    with torch.device("meta"):
        model = LMModel(cfg)
    model = model.to_empty(device="cuda").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
        for name, p in model.named_parameters():
            if name.endswith("alpha") or name.endswith("norm.weight") or name.endswith(".D"):
                p.fill_(1.0)
            if name.endswith("A_log"):
                p.uniform_(0, 2)
    return model.eval()


def bench_lm(config: str, batches=(1,)) -> dict[int, tuple[float, float]]:
    from models.lm import LMGenerator, SamplingConfig

    model = random_lm(config)
    cfg = model.cfg
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    read_bytes = weight_bytes - sum(e.weight.numel() * 2 for e in [*model.emb, model.text_emb,
                                                                      *model.depformer_emb,
                                                                      model.depformer_text_emb])
    bw = copy_bandwidth()
    gen = LMGenerator(model, SamplingConfig())
    # HBM serves reads and writes from one budget: a copy's read+write rate is what weight reads alone get.
    print(f"{config}: {weight_bytes / 1e9:.2f} GB bf16 weights; floor at batch 1 = {read_bytes / 1e9:.2f} GB read "
          f"/ {bw / 1e12:.2f} TB/s (copy, read + write) = {read_bytes / bw * 1e3:.2f} ms")
    from models.lm.cuda_graph import GraphedGenerator

    results = {}
    for b in batches:
        codes = torch.randint(0, cfg.card, (b, cfg.user_streams), device="cuda")
        try:
            with torch.no_grad():
                if b == batches[0]:
                    state = gen.init_state(b)
                    ms = _cuda_time(lambda c=codes, s=state, g=gen: g.step(c, s), iters=10)
                    print(f"  ours eager,       batch {b:3d}: median {statistics.median(ms):7.2f} ms")
                    del state
                graphed = GraphedGenerator(gen, gen.init_state(b))
                ms = _cuda_time(lambda g=graphed, c=codes: g.step(c), iters=50, warmup=3)
        except torch.OutOfMemoryError:
            per_session = gen.init_state(1).nbytes()
            print(f"  batch {b:3d}: out of GPU memory ({per_session / 1e9:.2f} GB of streaming state per session)")
            torch.cuda.empty_cache()
            break
        median, p99 = statistics.median(ms), percentile(ms, 0.99)
        results[b] = (median, p99)
        print(f"  ours CUDA graph,  batch {b:3d}: median {median:7.2f} ms  p99 {p99:7.2f} ms "
              f"per frame; real-time (<80 ms p99): {p99 < 80}")
        del graphed
    del model, gen
    torch.cuda.empty_cache()
    return results


def bench_sessions(config: str, counts: tuple[int, ...], frames: int = 60) -> dict[int, tuple[float, float]]:
    """Whole frame steps through the slot pool (Mimi-size codec encode + LM + decode, one CUDA graph per batch
    bucket, host copies included) for n live sessions -> {n: (median ms, p99 ms)}."""
    import numpy as np

    from benchmarks.timing import time_steps
    from models.codec import Codec, CodecConfig
    from models.lm import LMGenerator, SamplingConfig
    from streaming.slots import SlotPool

    model = random_lm(config)
    codec = Codec(CodecConfig.mimi(model.cfg.user_streams)).cuda().eval()
    gen = LMGenerator(model, SamplingConfig())
    per_session = gen.init_state(1).nbytes() + codec.init_state(1, chunk=1).nbytes()
    free, _ = torch.cuda.mem_get_info()
    fits = int(0.8 * free / per_session)
    capacity = min(max(counts), fits)
    print(f"{config} + Mimi-size codec: {per_session / 1e6:.1f} MB of streaming state per session; "
          f"{fits} sessions fit in free GPU memory; pool of {capacity} slots, CUDA graphs per bucket")
    pool = SlotPool(codec, gen, capacity)
    rng = np.random.default_rng(0)
    results = {}
    for n in [c for c in counts if c <= capacity]:
        while pool.active < n:
            pool.add(pool.active)
        inputs = ((0.1 * rng.standard_normal((n, codec.frame_size))).astype(np.float32) for _ in range(frames + 3))
        ms = time_steps(pool.step, inputs)
        median, p99 = statistics.median(ms), percentile(ms, 0.99)
        results[n] = (median, p99)
        print(f"  {n:4d} sessions: whole frame step median {median:7.2f} ms  p99 {p99:7.2f} ms; "
              f"real-time (<80 ms p99): {p99 < 80}", flush=True)
    if capacity < max(counts):
        print(f"  {max(counts)} sessions: do not fit in GPU memory")
    del pool, gen, model, codec
    torch.cuda.empty_cache()
    return results


def bench_reference_moshi_7b() -> float | None:
    try:
        from moshi.models import LMGen, loaders
    except Exception as exc:  # noqa: BLE001
        print(f"reference moshi not importable: {exc}")
        return None
    torch.manual_seed(0)
    with torch.device("meta"):
        lm = loaders.get_moshi_lm(None, device="meta", dtype=torch.bfloat16)
    lm = lm.to_empty(device="cuda")
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(0, 0.02)
    gen = LMGen(lm)
    codes = torch.randint(0, 2048, (1, 8, 1), device="cuda")
    with torch.no_grad(), gen.streaming(1):
        ms = _cuda_time(lambda g=gen: g.step(codes), iters=30, warmup=5)
    print(f"  reference moshi==0.2.13 LMGen (its CUDA graphs), batch 1: median {statistics.median(ms):7.2f} ms  "
          f"p99 {percentile(ms, 0.99):7.2f} ms")
    del lm, gen
    torch.cuda.empty_cache()
    return statistics.median(ms)


def run_gpu_bench(args) -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: `duplex bench gpu` needs a GPU (the CPU path is used automatically elsewhere)")
        return 0
    print(f"device: {torch.cuda.get_device_name()}")
    bench_mamba_layer()
    bench_attention_step()
    if args.skip_lm:
        return 0
    ref = bench_reference_moshi_7b()
    ours = bench_lm("moshi_7b", batches=(1,))
    print_gemv_choices()
    if ref is not None:
        print(f"  moshi_7b batch 1: ours / reference = {ours[1][0] / ref:.2f}x time (goal <= 0.6x)")
    else:
        print("no reference ratio (moshi package missing)")
    for config in ("hybrid_7b", "moshi_7b"):
        sessions = bench_sessions(config, tuple(args.batches))
        ok = [n for n, (_, p99) in sessions.items() if p99 < 80]
        print(f"  {config}: most concurrent sessions measured real-time incl. codec: {max(ok) if ok else 'none'}"
              + (" (goal >= 64)" if config == "hybrid_7b" else ""))
    return 0
