"""LM-related commands: `duplex bench lm` and `duplex bench gpu`."""

from __future__ import annotations

import argparse


def add_bench(sub: argparse._SubParsersAction) -> None:
    gpu = sub.add_parser("gpu", help="fused kernels and LM frame steps on a GPU, vs the reference")
    gpu.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    gpu.add_argument("--skip-lm", action="store_true", help="only the Mamba2 kernel comparison")
    gpu.set_defaults(handler=_gpu)


def _gpu(args) -> int:
    from agent.benchmarks.gpu import run_gpu_bench

    return run_gpu_bench(args)
