"""The dual-stream LM: temporal backbone (attention / Mamba2 hybrid) + depformer over codebooks.

Parameter names are kyutai's published Moshi names (`transformer.layers.N.self_attn.in_proj_weight`,
step-major fused depformer projections, ...), so `model.safetensors` loads directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import KVCacheState
from models.kernels import fused_ok
from models.kernels.embedding_triton import embed_into
from models.lm.config import LMConfig
from models.lm.layers import Attention, Embedding, RMSNorm, SiluGating
from models.lm.mamba2 import Mamba2Mixer, MambaState
from models.state import StreamState
from models.vision.cross_attention import GatedCrossAttention, SharedCrossAttention, VisionState


class _Block(nn.Module):
    """mixer (attention or Mamba2) -> optional gated cross-attention to the image -> SiLU-gated MLP."""

    def __init__(self, cfg: LMConfig, shared_xa: SharedCrossAttention | None):
        super().__init__()
        self.cfg = cfg
        self.norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        if shared_xa is not None:
            self.cross_attention = GatedCrossAttention(shared_xa, cfg.dim)
            self.norm_cross = RMSNorm(cfg.dim, cfg.norm_eps)
        else:
            self.cross_attention = None
        self.norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.gating = SiluGating(cfg.dim, cfg.dim_feedforward)

    def mix(self, x: torch.Tensor, state) -> torch.Tensor:
        raise NotImplementedError

    def forward_fused(self, x: torch.Tensor, pending: torch.Tensor | None, state, vision: VisionState | None = None,
                      gates: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The same block with each residual add fused into the RMSNorm after it (GPU inference): takes and
        returns the residual stream without its last update (`pending`), which the next norm adds."""
        x, update = self.mix_after_norm(x, pending, state)
        if self.cross_attention is not None and vision is not None:
            x = x + update
            update, gate = self.cross_attention(self.norm_cross(x), vision)
            if gates is not None:
                gates.append(gate)
        return self.gating.after_norm(x, update, self.norm2)

    def mix_after_norm(self, x: torch.Tensor, pending: torch.Tensor | None, state) -> tuple[torch.Tensor, torch.Tensor]:
        """GPU path: (x + pending, mix(norm1(x + pending)))."""
        x, h = self.norm1.add_then_norm(x, pending)
        return x, self.mix(h, state)

    def forward(self, x: torch.Tensor, state, vision: VisionState | None = None,
                gates: list | None = None) -> torch.Tensor:
        x = x + self.mix(self.norm1(x), state)
        if self.cross_attention is not None and vision is not None:
            update, gate = self.cross_attention(self.norm_cross(x), vision)
            x = x + update
            if gates is not None:
                gates.append(gate)
        return x + self.gating(self.norm2(x))


class AttentionBlock(_Block):
    def __init__(self, cfg: LMConfig, shared_xa: SharedCrossAttention | None = None):
        super().__init__(cfg, shared_xa)
        self.self_attn = Attention(cfg.dim, cfg.num_heads, cfg.kv_heads)

    def init_state(self, batch: int, device, dtype, chunk: int = 1) -> KVCacheState:
        return self.self_attn.init_cache(batch, self.cfg.context, device, dtype, chunk)

    def mix(self, x: torch.Tensor, state: KVCacheState) -> torch.Tensor:
        return self.self_attn(x, state, self.cfg.context, self.cfg.max_period)

    def mix_after_norm(self, x: torch.Tensor, pending: torch.Tensor | None,
                       state: KVCacheState) -> tuple[torch.Tensor, torch.Tensor]:
        x, qkv = self.norm1.add_norm_linear(x, pending, self.self_attn.in_weight())  # norm folded into q|k|v
        return x, self.self_attn.forward_qkv(qkv, state, self.cfg.context, self.cfg.max_period)


class MambaBlock(_Block):
    def __init__(self, cfg: LMConfig, shared_xa: SharedCrossAttention | None = None):
        super().__init__(cfg, shared_xa)
        self.mixer = Mamba2Mixer(cfg.dim, cfg.mamba)

    def init_state(self, batch: int, device, dtype, chunk: int = 1) -> MambaState:
        return self.mixer.init_state(batch, device, dtype)

    def mix(self, x: torch.Tensor, state: MambaState) -> torch.Tensor:
        return self.mixer(x, state)


class Backbone(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        shared = SharedCrossAttention(cfg.dim, cfg.vision.xa_dim, cfg.num_heads) if cfg.vision else None
        self.layers = nn.ModuleList(
            [(AttentionBlock if kind == "A" else MambaBlock)(cfg, shared if cfg.has_cross_attention(i) else None)
             for i, kind in enumerate(cfg.layer_kinds)])

    @property
    def shared_xa(self) -> SharedCrossAttention | None:
        """The one cross-attention projection all vision layers share (registered under each of them)."""
        for layer in self.layers:
            if layer.cross_attention is not None:
                return layer.cross_attention.mha
        return None


class DepformerLayer(nn.Module):
    """Depformer layer: per-sub-step attention projections and MLPs, shared norms, no positions."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        d = cfg.depformer_dim
        self.norm1 = RMSNorm(d, cfg.norm_eps)
        self.self_attn = Attention(d, cfg.depformer_num_heads, steps=cfg.dep_q)
        self.norm2 = RMSNorm(d, cfg.norm_eps)
        self.gating = nn.ModuleList([SiluGating(d, cfg.depformer_dim_feedforward) for _ in range(cfg.dep_q)])

    def forward(self, x: torch.Tensor, kv: torch.Tensor, step: int) -> torch.Tensor:
        x = x + self.self_attn.forward_substep(self.norm1(x), kv, step)
        return x + self.gating[step](self.norm2(x))

    def forward_fused(self, x: torch.Tensor, pending: torch.Tensor | None, kv: torch.Tensor,
                      step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """As `_Block.forward_fused`: residual adds fused into the norms after them."""
        x, qkv = self.norm1.add_norm_linear(x, pending, self.self_attn.in_weight(step))
        return self.gating[step].after_norm(x, self.self_attn.substep_qkv(qkv, kv, step), self.norm2)


class Depformer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.layers = nn.ModuleList([DepformerLayer(cfg) for _ in range(cfg.depformer_num_layers)])


@dataclass
class DepformerScratch(StreamState):
    """The depformer's keys and values within one frame, [B, 2, H, dep_q, D] per layer. Every entry a frame reads
    was written earlier in that frame, so it needs no reset: allocated once with the slot pool, not per frame."""

    kv: list


@dataclass
class BackboneState(StreamState):
    layers: list  # KVCacheState or MambaState per layer
    vision: VisionState | None = None  # cached image keys/values per slot (vision models only)


class LMModel(nn.Module):
    def __init__(self, cfg: LMConfig | None = None):
        super().__init__()
        cfg = cfg or LMConfig.moshi_7b()
        self.cfg = cfg
        self.checkpoint_layers = False  # training: recompute each backbone block in the backward pass
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
        self.image_encoder = None
        if cfg.vision is not None and cfg.vision.encoder is not None:
            from models.vision.encoder import ImageEncoder, ImageEncoderConfig

            self.image_encoder = ImageEncoder(ImageEncoderConfig(**cfg.vision.encoder))
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

    def init_state(self, batch: int, chunk: int = 1) -> BackboneState:
        """`chunk`: the most frames one forward_text call will see (1 for streaming; T for training)."""
        layers = [layer.init_state(batch, self.device, self.dtype, chunk) for layer in self.transformer.layers]
        vision = None
        if self.cfg.vision is not None:
            heads, dh, n = self.cfg.num_heads, self.cfg.dim // self.cfg.num_heads, self.num_image_tokens
            z = dict(device=self.device, dtype=self.dtype)
            vision = VisionState(keys=torch.zeros(batch, heads, n, dh, **z),
                                 values=torch.zeros(batch, heads, n, dh, **z),
                                 present=torch.zeros(batch, dtype=torch.bool, device=self.device),
                                 gate=torch.zeros(batch, dtype=torch.float32, device=self.device))
        return BackboneState(layers, vision)

    @property
    def num_image_tokens(self) -> int:
        if self.image_encoder is not None:
            return self.image_encoder.cfg.num_tokens
        return self.cfg.vision.num_tokens if self.cfg.vision else 0

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [0, 1] -> image tokens [B, N, xa_dim] (models with our own image encoder)."""
        if self.image_encoder is None:
            raise ValueError("this model has no image encoder")
        return self.image_encoder(images.to(self.device, self.dtype))

    @torch.no_grad()
    def set_image(self, state: BackboneState, row: int, tokens: torch.Tensor | None) -> None:
        """Project one image's tokens [N, xa_dim] once into slot `row`'s cache (None removes the image)."""
        if state.vision is None:
            raise ValueError("this model has no vision adapter")
        if tokens is None:
            state.vision.present[row] = False
            return
        keys, values = self.transformer.shared_xa.project_kv(tokens[None].to(self.device, self.dtype))
        state.vision.keys[row].copy_(keys[0])
        state.vision.values[row].copy_(values[0])
        state.vision.present[row] = True

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, 1 + n_q, T] -> summed embeddings [B, T, dim]."""
        if fused_ok(tokens):  # one accumulating launch per table
            B, _, T = tokens.shape
            x = torch.empty(B, T, self.cfg.dim, device=tokens.device, dtype=self.text_emb.weight.dtype)
            for i, emb in enumerate([self.text_emb, *self.emb]):
                embed_into(x, emb.weight, tokens[:, i], accumulate=i > 0)
            return x
        x = self.text_emb(tokens[:, 0])
        for k, emb in enumerate(self.emb):
            x = x + emb(tokens[:, 1 + k])
        return x

    def forward_text(self, tokens: torch.Tensor, state: BackboneState) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone step(s): tokens [B, 1 + n_q, T] -> (normed hidden [B, T, dim], text logits [B, T, V])."""
        x = self.embed(tokens)
        gates: list[torch.Tensor] = []
        vision = state.vision
        if (vision is not None and not x.is_cuda and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and not bool(vision.present.any())):
            # no session shows an image: skip cross-attention (on GPU, and in an exported graph, keep one path)
            vision = None
        if fused_ok(x):  # each residual add joins the RMSNorm after it: one launch instead of two
            pending = None
            for layer, layer_state in zip(self.transformer.layers, state.layers):
                x, pending = layer.forward_fused(x, pending, layer_state, vision, gates)
            x = self.out_norm.add_then_norm(x, pending)[1]
        elif self.checkpoint_layers and torch.is_grad_enabled():
            x = self._checkpointed_layers(x, state, vision, gates)
            x = self.out_norm(x)
        else:
            for layer, layer_state in zip(self.transformer.layers, state.layers):
                x = layer(x, layer_state, vision, gates)
            x = self.out_norm(x)
        if gates:
            state.vision.gate.copy_(torch.stack(gates).mean(0).detach())
        elif state.vision is not None:
            state.vision.gate.zero_()
        return x, self.text_linear(x)

    def _checkpointed_layers(self, x: torch.Tensor, state: BackboneState, vision, gates: list) -> torch.Tensor:
        """Training with activation checkpointing: each block's activations are recomputed in the backward pass.
        A recomputation must see the block's state as the first pass did, so each pass starts from a fresh copy
        of the (empty, offline) state instead of the one the first pass advanced."""
        from torch.utils.checkpoint import checkpoint

        B, T = x.shape[0], x.shape[1]

        def run(layer, x):
            fresh = layer.init_state(B, self.device, self.dtype, chunk=T)
            return layer(x, fresh, vision, gates)

        for layer in self.transformer.layers:
            x = checkpoint(run, layer, x, use_reentrant=False)
        return x

    def depformer_parallel(self, hidden: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor:
        """All depformer sub-steps at once (training): hidden [N, dim], prev_tokens [N, dep_q] (text, then
        audio 0..dep_q-2) -> logits [N, dep_q, card]. Same math as stepping `depformer_logits` k = 0..dep_q-1."""
        cfg = self.cfg
        steps = range(cfg.dep_q)
        x = torch.stack([self.depformer_in[k](hidden) + (self.depformer_text_emb if k == 0 else
                                                         self.depformer_emb[k - 1])(prev_tokens[:, k])
                         for k in steps], dim=1)  # [N, Q, dd]
        N, Q, dd = x.shape
        for layer in self.depformer.layers:
            attn = layer.self_attn
            h = layer.norm1(x)
            qkv = [attn.project(h[:, k:k + 1], step=k) for k in steps]
            q, kk, v = (torch.cat([t[i] for t in qkv], dim=2) for i in range(3))
            y = F.scaled_dot_product_attention(q, kk, v, is_causal=True).transpose(1, 2).reshape(N, Q, -1)
            w_out = attn.out_proj.weight.view(attn.steps, dd, -1)
            x = x + torch.stack([F.linear(y[:, k], w_out[k]) for k in steps], dim=1)
            h = layer.norm2(x)
            x = x + torch.stack([layer.gating[k](h[:, k]) for k in steps], dim=1)
        return torch.stack([self.linears[k](x[:, k]) for k in steps], dim=1)

    def depformer_scratch(self, batch: int) -> DepformerScratch:
        cfg = self.cfg
        heads = cfg.depformer_num_heads
        shape = (batch, 2, heads, cfg.dep_q, cfg.depformer_dim // heads)
        return DepformerScratch(kv=[torch.zeros(shape, device=self.device, dtype=self.dtype)
                                    for _ in self.depformer.layers])

    def depformer_logits(self, k: int, prev_token: torch.Tensor, hidden: torch.Tensor,
                         scratch: DepformerScratch) -> torch.Tensor:
        """Sub-step k: prev_token [B] (text for k=0, audio k-1 otherwise), hidden [B, 1, dim] -> [B, card]."""
        emb = self.depformer_text_emb if k == 0 else self.depformer_emb[k - 1]
        x = self.depformer_in[k](hidden)
        if fused_ok(x):  # embedding accumulated in place; residual adds carried into the next norm
            x = embed_into(x.contiguous(), emb.weight, prev_token[:, None], accumulate=True)
            pending = None
            for layer, kv in zip(self.depformer.layers, scratch.kv):
                x, pending = layer.forward_fused(x, pending, kv, k)
            x = x + pending
        else:
            x = x + emb(prev_token[:, None])
            for layer, kv in zip(self.depformer.layers, scratch.kv):
                x = layer(x, kv, k)
        return self.linears[k](x)[:, 0]
