"""Batch-1 matrix-vector products with the op before them folded in: one launch instead of two.

At batch 1 the frame step is a chain of GEMVs with small element-wise kernels between them (the residual add
+ RMSNorm before each projection, the SiLU gating before each MLP's output projection); each of those costs a
launch. Here one program per block of output rows recomputes the prologue for the whole input vector (a few
thousand elements, from L2) and streams its rows of the weight:

- `gated_linear(h, w)`: (silu(a) * b) @ w.T for h = [a | b] (the MLP's output projection);
- `norm_linear(x, pending, alpha, eps, w)`: (x + pending, rmsnorm(x + pending) @ w.T) (a block's first
  projection after the residual add; program 0 also writes the new residual stream).

Every intermediate is rounded to the model's dtype where the separate ops round it (`models.lm.layers` is the
reference). Whether a fused GEMV beats cuBLAS plus the separate kernel depends on the GPU and the shape, so
`choose` times both per shape (each inside a CUDA graph, as the frame step runs them) the first time a shape is
seen outside graph capture, and keeps the faster: the fused kernels can only remove time. DUPLEX_GEMV=fused or
=cublas forces one (benchmarks); without CUDA (tests through Triton's interpreter) the fused kernel runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from models.kernels import HAVE_TRITON, has_failed, kernel_failed, require_triton, time_in_graph

if HAVE_TRITON:
    import triton
    import triton.language as tl

    _INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
    _CONFIGS = ([triton.Config({"BLOCK_N": 16, "BLOCK_K": 64})] if _INTERPRET else
                [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w)
                 for n, k, w in [(8, 512, 4), (16, 256, 4), (16, 512, 8), (32, 128, 4), (32, 256, 8), (64, 128, 8)]])

    @triton.autotune(configs=_CONFIGS, key=["N", "K", "PROLOGUE"])
    @triton.jit
    def _gemv_kernel(x_ptr, u_ptr, alpha_ptr, w_ptr, y_ptr, sum_ptr, N, K, w_sn, eps,
                     PROLOGUE: tl.constexpr, HAS_U: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """PROLOGUE 1: x = silu(h[:K]) * h[K:]; 2: x = rmsnorm(x + u) (u if HAS_U)."""
        pid = tl.program_id(0)
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = n < N
        kk = tl.arange(0, BLOCK_K)
        dt = x_ptr.dtype.element_ty
        rstd = 0.0
        if PROLOGUE == 2:
            ssq = tl.zeros([BLOCK_K], tl.float32)
            for k0 in range(0, K, BLOCK_K):
                k = k0 + kk
                mk = k < K
                s = tl.load(x_ptr + k, mask=mk, other=0.0).to(tl.float32)
                if HAS_U:
                    s = (s + tl.load(u_ptr + k, mask=mk, other=0.0).to(tl.float32)).to(dt).to(tl.float32)
                    if pid == 0:
                        tl.store(sum_ptr + k, s.to(dt), mask=mk)
                ssq += s * s
            rstd = 1.0 / tl.sqrt(eps + tl.sum(ssq, axis=0) / K)
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + kk
            mk = k < K
            if PROLOGUE == 1:
                a = tl.load(x_ptr + k, mask=mk, other=0.0).to(tl.float32)
                b = tl.load(x_ptr + K + k, mask=mk, other=0.0).to(tl.float32)
                xv = (a / (1.0 + tl.exp(-a)) * b).to(dt).to(tl.float32)
            elif PROLOGUE == 2:
                s = tl.load(x_ptr + k, mask=mk, other=0.0).to(tl.float32)
                if HAS_U:
                    s = (s + tl.load(u_ptr + k, mask=mk, other=0.0).to(tl.float32)).to(dt).to(tl.float32)
                al = tl.load(alpha_ptr + k, mask=mk, other=0.0).to(tl.float32)
                xv = (s * al * rstd).to(dt).to(tl.float32)
            else:
                xv = tl.load(x_ptr + k, mask=mk, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + n[:, None] * w_sn + k[None, :], mask=mn[:, None] & mk[None, :], other=0.0)
            acc += w.to(tl.float32) * xv[None, :]
        tl.store(y_ptr + n, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=mn)


def _launch(prologue: int, x: torch.Tensor, w: torch.Tensor, u: torch.Tensor | None = None,
            alpha: torch.Tensor | None = None, eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    N, K = w.shape
    if w.stride(1) != 1:
        raise ValueError("the weight's rows must be contiguous")
    x = x.reshape(-1).contiguous()
    y = torch.empty(N, device=x.device, dtype=x.dtype)
    total = torch.empty(K, device=x.device, dtype=x.dtype) if u is not None else None
    u_arg = u.reshape(-1).contiguous() if u is not None else x
    _gemv_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](
        x, u_arg, alpha.reshape(-1) if alpha is not None else x, w, y, total if total is not None else y,
        N, K, w.stride(0), eps, PROLOGUE=prologue, HAS_U=u is not None)
    return y, total


def gated_linear_fused(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h [1, 1, 2K] -> (silu(h[..., :K]) * h[..., K:]) @ w.T, [1, 1, N], in one launch."""
    require_triton("models.lm.layers.SiluGating")
    return _launch(1, h, w)[0].view(*h.shape[:-1], w.shape[0])


def norm_linear_fused(x: torch.Tensor, pending: torch.Tensor | None, alpha: torch.Tensor, eps: float,
                      w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x, pending [1, 1, K] -> (s, rmsnorm(s) @ w.T) with s = x + pending (x if None), in one launch."""
    require_triton("models.lm.layers.RMSNorm")
    y, total = _launch(2, x, w, pending, alpha, eps)
    y = y.view(*x.shape[:-1], w.shape[0])
    return (total.view(x.shape) if total is not None else x), y


# Per shape: did the fused kernel win? Filled by `choose` outside graph capture.
_decisions: dict[tuple, bool] = {}
_timings: dict[tuple, tuple[float, float]] = {}


def choose(key: tuple, fused: Callable[[], object], separate: Callable[[], object], device: torch.device) -> bool:
    """Use the fused kernel for this shape? Forced by DUPLEX_GEMV; always on CPU (the interpreter); on a GPU,
    the faster of the two, timed once per shape (while a graph is being captured, an untimed shape takes the
    separate ops)."""
    forced = os.environ.get("DUPLEX_GEMV", "auto")
    if forced in ("fused", "cublas"):
        return forced == "fused"
    if device.type != "cuda":
        return True
    if key not in _decisions:
        if torch.cuda.is_current_stream_capturing() or has_failed("gemv"):
            return False
        try:
            t_fused = time_in_graph(fused)
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - compile failures: warn once, then cuBLAS and the separate ops
            kernel_failed("gemv", exc)
            return False
        t_separate = time_in_graph(separate)
        _timings[key] = (t_fused, t_separate)
        _decisions[key] = t_fused < t_separate
    return _decisions[key]


def timings() -> dict[tuple, tuple[float, float]]:
    """(fused ms, separate ms) per shape timed so far (for `duplex bench gpu`)."""
    return dict(_timings)


def gated_linear(h: torch.Tensor, w: torch.Tensor, separate: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The MLP's gating and output projection: fused for one row when that is faster, else `separate(h)`."""
    if h.numel() != 2 * w.shape[1]:
        return separate(h)
    key = ("gated", tuple(w.shape), h.dtype)
    if choose(key, lambda: gated_linear_fused(h, w), lambda: separate(h), h.device):
        return gated_linear_fused(h, w)
    return separate(h)


def norm_linear(x: torch.Tensor, pending: torch.Tensor | None, alpha: torch.Tensor, eps: float, w: torch.Tensor,
                separate: Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A block's residual add, RMSNorm and first projection: fused for one row when that is faster, else
    `separate(x, pending)`."""
    if x.numel() != w.shape[1]:
        return separate(x, pending)
    key = ("norm", tuple(w.shape), x.dtype, pending is not None)
    if choose(key, lambda: norm_linear_fused(x, pending, alpha, eps, w), lambda: separate(x, pending), x.device):
        return norm_linear_fused(x, pending, alpha, eps, w)
    return separate(x, pending)
