"""Embedding lookups with Moshi's "no input" id (-1 embeds to zero), accumulated in place: one launch each.

The PyTorch path (`models.lm.layers.Embedding`) takes ~5 launches per lookup (clamp, gather, compare, zero,
select) plus an add per summed table; a Moshi-size frame sums 17 tables for the backbone and one per depformer
sub-step. `embed_into(out, weight, tokens, accumulate)` writes or adds table rows straight into `out`.
"""

from __future__ import annotations

import torch

from models.kernels import HAVE_TRITON, falls_back_to, require_triton

if HAVE_TRITON:
    import triton
    import triton.language as tl


    @triton.jit
    def _embed_kernel(tokens_ptr, weight_ptr, out_ptr, D, T, stride_b, stride_t, ACCUMULATE: tl.constexpr,
                      BLOCK: tl.constexpr):
        row = tl.program_id(0)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = c < D
        token = tl.load(tokens_ptr + (row // T) * stride_b + (row % T) * stride_t)
        emb = tl.load(weight_ptr + tl.maximum(token, 0) * D + c, mask=m, other=0.0).to(tl.float32)
        emb = tl.where(token >= 0, emb, 0.0)
        if ACCUMULATE:
            emb += tl.load(out_ptr + row * D + c, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * D + c, emb.to(out_ptr.dtype.element_ty), mask=m)


def embed_into_ref(out: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, accumulate: bool) -> torch.Tensor:
    """The PyTorch path of `embed_into` (the model's `Embedding`: token -1 embeds to zero)."""
    rows = torch.nn.functional.embedding(tokens.clamp(min=0), weight)
    rows = torch.where((tokens == -1)[..., None], torch.zeros((), dtype=rows.dtype, device=rows.device), rows)
    return out.add_(rows) if accumulate else out.copy_(rows)


@falls_back_to("embedding", embed_into_ref)
def embed_into(out: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, accumulate: bool) -> torch.Tensor:
    """out [B, T, D] (contiguous) = (out +) weight[tokens] with zero rows for tokens == -1; tokens [B, T] (any
    strides: a row of the generator's token columns is read in place, without a copy)."""
    require_triton("models.lm.layers.Embedding")
    D = weight.shape[1]
    B, T = tokens.shape
    if not out.is_contiguous() or out.shape != (B, T, D):
        raise ValueError(f"embed_into needs a contiguous output of shape {(B, T, D)}, got {tuple(out.shape)}")
    block = min(1024, triton.next_power_of_2(D))
    _embed_kernel[(B * T, triton.cdiv(D, block))](tokens, weight.contiguous(), out, D, T, tokens.stride(0),
                                                  tokens.stride(1), ACCUMULATE=accumulate, BLOCK=block)
    return out
