"""The dual-stream LM: temporal backbone (attention / Mamba2 hybrid) + depformer over codebooks.

Parameter names are kyutai's published Moshi names (`transformer.layers.N.self_attn.in_proj_weight`,
step-major fused depformer projections, ...), so `model.safetensors` loads directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.attention import KVCacheState
from models.lm.config import LMConfig
from models.lm.layers import Attention, Embedding, RMSNorm, SiluGating
from models.lm.mamba2 import Mamba2Mixer, MambaState
from models.state import StreamState


class AttentionBlock(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg.dim, cfg.num_heads, cfg.kv_heads)
        self.norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.gating = SiluGating(cfg.dim, cfg.dim_feedforward)

    def init_state(self, batch: int, device, dtype) -> KVCacheState:
        return self.self_attn.init_cache(batch, self.cfg.context, device, dtype)

    def forward(self, x: torch.Tensor, state: KVCacheState) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), state, self.cfg.context, self.cfg.max_period)
        return x + self.gating(self.norm2(x))


class MambaBlock(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg.dim, cfg.mamba)
        self.norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.gating = SiluGating(cfg.dim, cfg.dim_feedforward)

    def init_state(self, batch: int, device, dtype) -> MambaState:
        return self.mixer.init_state(batch, device, dtype)

    def forward(self, x: torch.Tensor, state: MambaState) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), state)
        return x + self.gating(self.norm2(x))


class Backbone(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            [AttentionBlock(cfg) if kind == "A" else MambaBlock(cfg) for kind in cfg.layer_kinds])


class DepformerLayer(nn.Module):
    """Depformer layer: per-sub-step attention projections and MLPs, shared norms, no positions."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        d = cfg.depformer_dim
        self.norm1 = RMSNorm(d, cfg.norm_eps)
        self.self_attn = Attention(d, cfg.depformer_num_heads, steps=cfg.dep_q)
        self.norm2 = RMSNorm(d, cfg.norm_eps)
        self.gating = nn.ModuleList([SiluGating(d, cfg.depformer_dim_feedforward) for _ in range(cfg.dep_q)])

    def forward(self, x: torch.Tensor, cache: KVCacheState, step: int, context: int) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), cache, context, None, step=step)
        return x + self.gating[step](self.norm2(x))


class Depformer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.layers = nn.ModuleList([DepformerLayer(cfg) for _ in range(cfg.depformer_num_layers)])


@dataclass
class BackboneState(StreamState):
    layers: list  # KVCacheState or MambaState per layer


class LMModel(nn.Module):
    def __init__(self, cfg: LMConfig | None = None):
        super().__init__()
        cfg = cfg or LMConfig.moshi_7b()
        self.cfg = cfg
        d, dd = cfg.dim, cfg.depformer_dim
        self.emb = nn.ModuleList([Embedding(cfg.card + 1, d) for _ in range(cfg.n_q)])
        self.text_emb = Embedding(cfg.text_card + 1, d)
        self.transformer = Backbone(cfg)
        self.out_norm = RMSNorm(d, cfg.norm_eps)
        self.text_linear = nn.Linear(d, cfg.text_card, bias=False)
        self.depformer_in = nn.ModuleList([nn.Linear(d, dd, bias=False) for _ in range(cfg.dep_q)])
        self.depformer_emb = nn.ModuleList([Embedding(cfg.card + 1, dd) for _ in range(cfg.dep_q - 1)])
        self.depformer_text_emb = Embedding(cfg.text_card + 1, dd)
        self.depformer = Depformer(cfg)
        self.linears = nn.ModuleList([nn.Linear(dd, cfg.card, bias=False) for _ in range(cfg.dep_q)])
        for emb in [*self.emb, self.text_emb, *self.depformer_emb, self.depformer_text_emb]:
            nn.init.normal_(emb.weight, std=emb.weight.shape[1] ** -0.5)

    @property
    def device(self) -> torch.device:
        return self.text_linear.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_linear.weight.dtype

    def initial_tokens(self) -> torch.Tensor:
        """[1 + n_q] ids fed before a stream has started: text_card for text, card for audio."""
        return torch.tensor([self.cfg.text_card] + [self.cfg.card] * self.cfg.n_q, device=self.device)

    def init_state(self, batch: int) -> BackboneState:
        return BackboneState([layer.init_state(batch, self.device, self.dtype) for layer in self.transformer.layers])

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, 1 + n_q, T] -> summed embeddings [B, T, dim]."""
        x = self.text_emb(tokens[:, 0])
        for k, emb in enumerate(self.emb):
            x = x + emb(tokens[:, 1 + k])
        return x

    def forward_text(self, tokens: torch.Tensor, state: BackboneState) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone step(s): tokens [B, 1 + n_q, T] -> (normed hidden [B, T, dim], text logits [B, T, V])."""
        x = self.embed(tokens)
        for layer, layer_state in zip(self.transformer.layers, state.layers):
            x = layer(x, layer_state)
        x = self.out_norm(x)
        return x, self.text_linear(x)

    def depformer_caches(self, batch: int) -> list[KVCacheState]:
        cfg = self.cfg
        heads = cfg.depformer_num_heads
        return [KVCacheState.create(batch, heads, cfg.depformer_dim // heads, cfg.dep_q, 1, self.device, self.dtype)
                for _ in self.depformer.layers]

    def depformer_logits(self, k: int, prev_token: torch.Tensor, hidden: torch.Tensor,
                         caches: list[KVCacheState]) -> torch.Tensor:
        """Sub-step k: prev_token [B] (text for k=0, audio k-1 otherwise), hidden [B, 1, dim] -> [B, card]."""
        emb = self.depformer_text_emb if k == 0 else self.depformer_emb[k - 1]
        x = self.depformer_in[k](hidden) + emb(prev_token[:, None])
        for layer, cache in zip(self.depformer.layers, caches):
            x = layer(x, cache, k, self.cfg.dep_q)
        return self.linears[k](x)[:, 0]
