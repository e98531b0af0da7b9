"""Kernel launches per batch-1 LM frame step on the GPU path, counted on any machine (no GPU needed).

At batch 1 a frame step is launch-bound, so the launch count is the figure to drive down between GPU runs.
`python -m benchmarks.launches [--reference]` builds a Moshi-shaped LM (32 layers, 8 depformer sub-steps
x 6 layers; tiny widths and a short context, since the count depends on structure, not size), forces the fused path on
(`models.kernels.fused_path`; its Triton kernels run through Triton's CPU interpreter), and counts every aten
op that launches a kernel plus one per call of our fused kernels, and prints the ratio to the PyTorch path
(`--reference` lists the PyTorch path's launches instead).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

# Views and allocations launch nothing.
_NO_LAUNCH = {"view", "_unsafe_view", "transpose", "slice", "select", "expand", "split", "split_with_sizes",
              "unsqueeze", "as_strided", "t", "detach", "alias", "permute", "squeeze", "reshape", "unbind",
              "lift_fresh", "empty", "empty_like", "empty_strided", "_local_scalar_dense"}


def count_launches(reference: bool = False) -> Counter:
    """Needs TRITON_INTERPRET=1 set before Triton is imported (`main` re-executes itself with it)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    import models.kernels.attention_triton as attention_k
    import models.kernels.embedding_triton as embedding_k
    import models.kernels.gemv_triton as gemv_k
    import models.kernels.mamba2_triton as mamba_k
    import models.kernels.rope_triton as rope_k
    import models.kernels.sampling_triton as sampling_k
    import models.lm.layers as layers
    import models.lm.model as model_mod
    from models.kernels import fused_path, reference_path
    from models.lm import LMConfig, LMGenerator, LMModel, SamplingConfig

    counts: Counter = Counter()
    inside_kernel = [False]

    class Hook(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if not inside_kernel[0] and name not in _NO_LAUNCH:
                counts[name] += 1
            return func(*args, **(kwargs or {}))

    def one_launch(fn, name):
        def wrapped(*args, **kwargs):
            inside_kernel[0] = True
            try:
                return fn(*args, **kwargs)
            finally:
                inside_kernel[0] = False
                counts[f"triton:{name}"] += 1
        return wrapped

    class CountedKernel:  # a Triton kernel whose every launch is counted: kernel[grid](...)
        def __init__(self, kernel, name):
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid):
            return one_launch(self.kernel[grid], self.name)

    patched: list[tuple[object, str, object]] = []  # (module, name, original): put back when done

    def patch(mod, name, value) -> None:
        patched.append((mod, name, getattr(mod, name)))
        setattr(mod, name, value)

    if not reference:
        for mod, name in [(attention_k, "_decode_kernel"), (attention_k, "_merge_kernel"), (gemv_k, "_gemv_kernel")]:
            patch(mod, name, CountedKernel(getattr(mod, name), name.strip("_")))
        for mod, name, users in [(mamba_k, "rmsnorm", [layers]), (mamba_k, "silu_gate", [layers]),
                                 (mamba_k, "add_rmsnorm", [layers]), (embedding_k, "embed_into", [model_mod]),
                                 (rope_k, "rope_fused", []),
                                 (sampling_k, "sample_fused", []), (mamba_k, "mamba2_step_fused", [])]:
            fn = one_launch(getattr(mod, name), name)
            for target in (mod, *users):
                patch(target, name, fn)
    try:
        cfg = LMConfig(dim=64, num_heads=4, num_layers=32, context=100, text_card=32000, depformer_dim=32,
                       depformer_dim_feedforward=132, depformer_num_heads=2, depformer_num_layers=6)
        gen = LMGenerator(LMModel(cfg).eval(), SamplingConfig())
        state = gen.init_state(1)
        codes = torch.zeros(1, cfg.user_streams, dtype=torch.long)
        with torch.no_grad(), (reference_path() if reference else fused_path()):
            gen.step(codes, state)
            counts.clear()
            with Hook():
                gen.step(codes, state)
    finally:
        for mod, name, original in reversed(patched):
            setattr(mod, name, original)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", action="store_true", help="count the PyTorch path instead")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":  # Triton reads it once, at import: start again with it set
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.launches", *sys.argv[1:]],
                  {**os.environ, "TRITON_INTERPRET": "1"})
    reference = sum(count_launches(reference=True).values())
    counts = count_launches(args.reference)
    total = sum(counts.values())
    print(f"{'PyTorch' if args.reference else 'GPU (fused)'} path: {total} launches per batch-1 frame step of a "
          f"Moshi-shaped LM; the PyTorch path (baseline): {reference}; ratio {total / reference:.2f}x")
    for name, n in counts.most_common(16):
        print(f"  {n:5d}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
