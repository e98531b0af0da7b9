"""Streaming generation with Moshi's token alignment, one batch slot per session.

Each 80 ms frame: write the user's codes into a small token ring at their delayed positions, read the
current input column (initial tokens while a stream has not started), run the backbone, sample the text
token, run the depformer's `dep_q` sub-steps, and write the sampled tokens one column ahead. The output
for a frame is read back `max_delay` frames later, so acoustic tokens line up with their semantic token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.lm.model import BackboneState, DepformerScratch, LMModel
from models.lm.sampling import SamplingConfig, sample
from models.state import StreamState

UNGENERATED = -2


@dataclass
class GenState(StreamState):
    backbone: BackboneState
    tokens: torch.Tensor  # [B, 1 + n_q, max_delay + 2] ring of token ids (UNGENERATED when not yet known)
    offsets: torch.Tensor  # [B] frames stepped by each slot
    seeds: torch.Tensor  # [B] sampling seed per slot
    depformer: DepformerScratch  # within-frame depformer keys/values (no reset needed)

    def reset(self, mask: torch.Tensor | None = None) -> None:
        seeds = self.seeds.clone()
        self.backbone.reset(mask)
        if mask is None:
            self.tokens.fill_(UNGENERATED)
            self.offsets.zero_()
        else:
            m = mask.to(self.tokens.device)
            self.tokens.copy_(torch.where(m[:, None, None], torch.full_like(self.tokens, UNGENERATED), self.tokens))
            self.offsets.copy_(torch.where(m, torch.zeros_like(self.offsets), self.offsets))
        self.seeds.copy_(seeds)


@dataclass
class StepOutput:
    text: torch.Tensor  # [B] text token for the frame (valid where `valid`)
    audio: torch.Tensor  # [B, dep_q] the model's audio codes for the frame
    valid: torch.Tensor  # [B] bool: False during the first max_delay frames of a slot
    text_logits: torch.Tensor  # [B, text_card] logits that produced the newest text token
    gate: torch.Tensor | None = None  # [B] mean vision gate of this step (vision models only)


class LMGenerator:
    def __init__(self, model: LMModel, sampling: SamplingConfig | None = None):
        self.model = model.eval()
        self.cfg = model.cfg
        self.sampling = sampling or SamplingConfig()
        self.delays = torch.tensor(self.cfg.delays, device=model.device)
        self.initial = model.initial_tokens()

    def init_state(self, batch: int, seeds: list[int] | torch.Tensor | None = None) -> GenState:
        cfg, device = self.cfg, self.model.device
        seeds_t = torch.as_tensor(seeds if seeds is not None else list(range(batch)), dtype=torch.int64,
                                  device=device)
        return GenState(
            backbone=self.model.init_state(batch),
            tokens=torch.full((batch, 1 + cfg.n_q, cfg.max_delay + 2), UNGENERATED, dtype=torch.long, device=device),
            offsets=torch.zeros(batch, dtype=torch.long, device=device),
            seeds=seeds_t,
            depformer=self.model.depformer_scratch(batch),
        )

    def reset_slot(self, state: GenState, slot: int, seed: int | None = None) -> None:
        mask = torch.zeros(state.offsets.shape[0], dtype=torch.bool, device=state.offsets.device)
        mask[slot] = True
        state.reset(mask)
        if seed is not None:
            state.seeds[slot] = seed

    @torch.no_grad()
    def step(self, user_codes: torch.Tensor, state: GenState) -> StepOutput:
        """user_codes [B, >= user_streams] (or [B, K, 1]) for this frame -> the model's tokens."""
        cfg = self.cfg
        if user_codes.dim() == 3:
            user_codes = user_codes[..., 0]
        if user_codes.shape[1] < cfg.user_streams:
            raise ValueError(f"expected {cfg.user_streams} user codebooks, got {user_codes.shape[1]}")
        user_codes = user_codes[:, : cfg.user_streams].to(self.model.device, torch.long)
        B = user_codes.shape[0]
        ring = state.tokens.shape[-1]
        s = state.offsets
        user_rows = state.tokens[:, 1 + cfg.dep_q:]
        write = (s[:, None] + self.delays[None, 1 + cfg.dep_q:]) % ring
        user_rows.scatter_(2, write[..., None], user_codes[..., None])

        column = state.tokens.gather(2, (s % ring)[:, None, None].expand(B, 1 + cfg.n_q, 1))[..., 0]
        is_initial = s[:, None] <= self.delays[None, :]
        inputs = torch.where(is_initial, self.initial[None, :], column)

        hidden, text_logits = self.model.forward_text(inputs[..., None], state.backbone)
        sp = self.sampling
        text = sample(text_logits[:, -1], sp.text_temperature, sp.text_top_k, state.seeds, s, stream=0)
        prev = text
        audio = []
        for k in range(cfg.dep_q):
            logits = self.model.depformer_logits(k, prev, hidden[:, -1:], state.depformer)
            prev = sample(logits, sp.temperature, sp.top_k, state.seeds, s, stream=1 + k)
            audio.append(prev)
        audio_t = torch.stack(audio, dim=1)

        state.offsets.add_(1)
        new_col = (state.offsets % ring)[:, None, None]
        state.tokens[:, :1].scatter_(2, new_col, text[:, None, None])
        state.tokens[:, 1:1 + cfg.dep_q].scatter_(2, new_col.expand(B, cfg.dep_q, 1), audio_t[..., None])

        read = (state.offsets[:, None] - cfg.max_delay + self.delays[None, : 1 + cfg.dep_q]) % ring
        out = state.tokens[:, : 1 + cfg.dep_q].gather(2, read[..., None])[..., 0]
        valid = state.offsets > cfg.max_delay
        vision = state.backbone.vision
        return StepOutput(text=out[:, 0], audio=out[:, 1:], valid=valid, text_logits=text_logits[:, -1],
                          gate=None if vision is None else vision.gate.clone())
