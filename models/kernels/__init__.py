"""Fused Triton kernels for GPU inference, each beside the PyTorch path it replaces (the reference).

`fused_ok(x)` is the one rule deciding per call: CUDA tensors, no autograd (inference), Triton installed.
`reference_path()` and `fused_path()` force one path (tests compare both; `fused_path` also on CPU through
Triton's interpreter).
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import warnings
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


_failed: dict[str, str] = {}  # kernel name -> why it could not run here (the PyTorch path runs instead)


def fused_ok(x: torch.Tensor) -> bool:
    if _forced == "reference" or not HAVE_TRITON or torch.is_grad_enabled():
        return False
    return x.is_cuda or _forced == "fused"


def has_failed(kernel: str) -> bool:
    """Did this kernel fail on this setup (`kernel_failed`)? Never where the fused path is forced (tests)."""
    return kernel in _failed and _forced != "fused"


def kernel_failed(kernel: str, exc: Exception) -> None:
    """A fused kernel failed to compile or launch (a Triton version or GPU it was not tried on, say): warn
    once and let `has_failed(kernel)` send its callers down the PyTorch path from now on. Where the fused
    path is forced (tests), re-raise instead: a failure must not pass as a match."""
    if _forced == "fused":
        raise exc
    _failed[kernel] = f"{type(exc).__name__}: {exc}"
    warnings.warn(f"fused kernel {kernel} failed here ({_failed[kernel][:300]}); using the PyTorch path",
                  RuntimeWarning, stacklevel=2)


def falls_back_to(kernel: str, reference: Callable) -> Callable[[Callable], Callable]:
    """Decorate a fused kernel's wrapper: if the kernel fails to compile or launch (ValueError, the wrappers'
    own input checks, is raised as is), `kernel_failed` warns once and this and later calls run `reference`,
    which takes the same arguments and returns the same thing."""

    def wrap(fused: Callable) -> Callable:
        @functools.wraps(fused)
        def run(*args, **kwargs):
            if not has_failed(kernel):
                try:
                    return fused(*args, **kwargs)
                except ValueError:
                    raise
                except Exception as exc:  # noqa: BLE001 - compile/launch failures on an untried setup
                    kernel_failed(kernel, exc)
            return reference(*args, **kwargs)

        return run

    return wrap


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
