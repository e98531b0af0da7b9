"""Fused Triton kernels for GPU inference, each beside the PyTorch path it replaces (the reference).

`fused_ok(x)` is the one rule deciding per call: CUDA tensors, no autograd (inference), Triton installed.
`reference_path()` and `fused_path()` force one path (tests compare both; `fused_path` also on CPU through
Triton's interpreter).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator

import torch

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - CPU-only installs
    HAVE_TRITON = False

_forced: str | None = None  # None: decide per tensor; "reference" or "fused": forced (tests, debugging)


def require_triton(instead: str) -> None:
    if not HAVE_TRITON:
        raise RuntimeError(f"Triton is not installed (pip install triton, or use {instead})")


def fused_ok(x: torch.Tensor) -> bool:
    if _forced == "reference" or not HAVE_TRITON or torch.is_grad_enabled():
        return False
    return x.is_cuda or _forced == "fused"


@contextlib.contextmanager
def _forcing(mode: str) -> Iterator[None]:
    global _forced
    previous, _forced = _forced, mode
    try:
        yield
    finally:
        _forced = previous


def reference_path() -> contextlib.AbstractContextManager[None]:
    """Run the PyTorch reference path everywhere inside this block."""
    return _forcing("reference")


def fused_path() -> contextlib.AbstractContextManager[None]:
    """Run the fused kernels everywhere inside this block, CPU tensors included (through Triton's interpreter,
    TRITON_INTERPRET=1): how CPU-only CI checks the kernels inside whole models."""
    return _forcing("fused")


def time_in_graph(fn: Callable[[], object], repeat: int = 20) -> float:
    """Milliseconds per call of `fn` on the GPU, `repeat` calls captured in one CUDA graph: what a frame-step
    graph pays for it (no Python or launch overhead). Warms up (lazy init, autotuning) outside the capture."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads may use CUDA meanwhile
        for _ in range(repeat):
            fn()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / repeat)
    return statistics.median(times)
