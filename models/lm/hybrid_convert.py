"""Attention layers -> Mamba2 mixers initialised from the attention's own projections ("Mamba in the Llama").

Causal linear attention and a Mamba2 SSM with no decay compute the same thing: with per-head queries q_t,
keys k_s and values v_s,

    y_t = sum_{s<=t} (q_t . k_s) v_s          (linear attention, no softmax)
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,   y_t = h_t C_t + D x_t     (Mamba2, per head)

are equal when A = 0, dt = 1, D = 0 and x <- v, B <- k, C <- q. So each converted layer takes its value, key
and query projections as the x, B and C rows of the Mamba2 input projection (one Mamba2 group per attention
head, d_state = head_dim; GQA keys/values are repeated for the heads that share them) and keeps the output
projection. What attention has no counterpart for is initialised so that training (distillation) can start
from it: the gate rows z from the usual random init, dt and A from Mamba2's default ranges (a decay is what
lets a recurrent state forget; A = 0 would never forget), D = 0 (attention has no skip path), the causal
convolution as the identity (last tap 1) so the SSM first sees exactly the projected q, k, v. Rotary position
embeddings have no place in a recurrence and are dropped. See docs/architecture.md.
"""

from __future__ import annotations

import dataclasses

import torch

from models.lm.config import LMConfig, MambaConfig
from models.lm.model import LMModel


class ConversionError(ValueError):
    pass


def mamba_config_for(cfg: LMConfig) -> MambaConfig:
    """The Mamba2 shape that holds an attention layer of `cfg`: d_inner = heads * head_dim, one group per head."""
    head_dim = cfg.dim // cfg.num_heads
    return MambaConfig(d_state=head_dim, d_conv=cfg.mamba.d_conv, expand=1, headdim=head_dim,
                       ngroups=cfg.num_heads, chunk_size=cfg.mamba.chunk_size, dt_min=cfg.mamba.dt_min,
                       dt_max=cfg.mamba.dt_max)


def converted_config(cfg: LMConfig, pattern: str) -> LMConfig:
    """`cfg` with the layer kinds of `pattern` (repeated to num_layers): 'M' layers become Mamba2."""
    if not pattern or set(pattern) - {"A", "M"}:
        raise ConversionError(f"--pattern must be made of A (keep attention) and M (convert), got {pattern!r}")
    target = (pattern * (cfg.num_layers // len(pattern) + 1))[: cfg.num_layers]
    source = cfg.layer_kinds
    back = [i for i, (s, t) in enumerate(zip(source, target)) if s == "M" and t == "A"]
    if back:
        raise ConversionError(f"layers {back} are already Mamba2 and cannot become attention again")
    mamba = mamba_config_for(cfg)
    if "M" in source and dataclasses.asdict(cfg.mamba) != dataclasses.asdict(mamba):
        raise ConversionError("the source already has Mamba2 layers of another shape than converted attention "
                              f"layers would have ({cfg.mamba} vs {mamba}); convert an all-attention model")
    return dataclasses.replace(cfg, pattern=target, mamba=mamba)


@torch.no_grad()
def attention_to_mamba(attn, mixer, seed: int = 0) -> None:
    """Fill `mixer` (a Mamba2Mixer of `mamba_config_for` shape) from `attn` (an Attention with one step)."""
    H, KV, D = attn.num_heads, attn.kv_heads, attn.head_dim
    if mixer.nheads != H or mixer.cfg.headdim != D or mixer.cfg.d_state != D or mixer.cfg.ngroups != H:
        raise ConversionError("the Mamba2 mixer does not have the attention layer's shape")
    w = attn.in_weight(0)
    q, k, v = w.split([H * D, KV * D, KV * D], dim=0)
    repeat = H // KV  # GQA: each key/value head serves `repeat` query heads

    def per_head(t: torch.Tensor) -> torch.Tensor:
        return t.view(KV, D, -1).repeat_interleave(repeat, dim=0).reshape(H * D, -1)

    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(H * D, w.shape[1], generator=gen) * w.shape[1] ** -0.5
    dt_rows = torch.zeros(H, w.shape[1])
    mixer.in_proj.weight.copy_(torch.cat([z.to(w.dtype), per_head(v), per_head(k), q, dt_rows.to(w.dtype)], 0))
    mixer.conv1d.weight.zero_()
    mixer.conv1d.weight[:, 0, -1] = 1.0  # identity: the SSM sees this frame's projections
    mixer.conv1d.bias.zero_()
    mixer.D.zero_()
    mixer.norm.weight.fill_(1.0)
    mixer.out_proj.weight.copy_(attn.out_proj.weight)


@torch.no_grad()
def convert_to_hybrid(model: LMModel, pattern: str, seed: int = 0) -> LMModel:
    """Convert `model` in place (no second copy of its weights: a 7B model converts in the memory it already
    uses): `pattern`'s 'M' layers get a Mamba2 mixer filled from their attention, which is then dropped; norms,
    MLPs, cross-attention and everything outside the backbone's mixers are kept as they are."""
    from models.lm.mamba2 import Mamba2Mixer
    from models.lm.model import MambaBlock

    cfg = converted_config(model.cfg, pattern)
    torch.manual_seed(seed)  # the fresh parts (gate rows, dt, A) are reproducible
    for i, (src_kind, dst_kind) in enumerate(zip(model.cfg.layer_kinds, cfg.layer_kinds)):
        old = model.transformer.layers[i]
        if src_kind == "A" and dst_kind == "M":
            mixer = Mamba2Mixer(cfg.dim, cfg.mamba).to(model.device, model.dtype)
            attention_to_mamba(old.self_attn, mixer, seed + i)
            with torch.device("meta"):
                block = MambaBlock(cfg, None)
            block.mixer = mixer
            for name in ("norm1", "norm2", "gating", "cross_attention", "norm_cross"):
                if hasattr(old, name):
                    setattr(block, name, getattr(old, name))
            model.transformer.layers[i] = block
        model.transformer.layers[i].cfg = cfg
    model.cfg = cfg
    return model.eval()


def state_bytes_per_session(cfg: LMConfig, frames: int | None = None, bytes_per_value: int = 2) -> int:
    """Streaming state of one session in the temporal backbone: KV rings of the attention layers (keys and
    values, `frames` positions, default the config's context) plus the conv + SSM state of the Mamba2 layers
    (SSM state in float32)."""
    frames = cfg.context if frames is None else frames
    head_dim = cfg.dim // cfg.num_heads
    kv = 2 * frames * (cfg.kv_heads or cfg.num_heads) * head_dim * bytes_per_value
    m = cfg.mamba
    d_inner = m.expand * cfg.dim
    conv = (d_inner + 2 * m.ngroups * m.d_state) * (m.d_conv - 1) * bytes_per_value
    ssm = (d_inner // m.headdim) * m.headdim * m.d_state * 4
    kinds = cfg.layer_kinds
    return kinds.count("A") * kv + kinds.count("M") * (conv + ssm)
