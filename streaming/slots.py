"""The batched model step over a pool of session slots: codec encode -> LM -> codec decode.

Active sessions occupy rows [0, n) of preallocated streaming states; one step runs them all as a single
batched forward on the device. A leaving session's row is refilled by moving the last row into it, so the
active block stays contiguous and nobody else's state changes (sampling noise is keyed by each slot's own
seed and frame counter, which move with it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.codec import Codec
from models.lm import LMGenerator
from models.state import copy_slot, narrow_state
from streaming.frame_graphs import FrameGraphs, graphs_wanted


@dataclass
class FrameResult:
    text: np.ndarray  # [n] int64 text token per active slot
    valid: np.ndarray  # [n] bool, False during each slot's first frames (model delay)
    pcm: np.ndarray  # [n, frame_size] float32 model audio (silence where not valid)
    audio_codes: np.ndarray  # [n, dep_q]
    user_codes: np.ndarray  # [n, K]
    gate: np.ndarray | None = None  # [n] mean vision gate (vision models)
    text_logits: np.ndarray | None = None  # [n, text_card] the newest text token's logits (with keep_logits)


def floor_noise(generator: torch.Generator, seeds: list[int], offsets: list[int], samples: int) -> torch.Tensor:
    """[rows, samples] of the input noise floor, drawn from each session's own seed and frame index, so a session
    hears the same floor whichever other sessions share its batch (batched == alone); every backend's pool draws
    it here so that they hear the same."""
    return torch.stack([torch.randn(samples, generator=generator.manual_seed((seed * 1_000_003 + t) % 2**62))
                        for seed, t in zip(seeds, offsets)])


class SlotPool:
    def __init__(self, codec: Codec, generator: LMGenerator, capacity: int, noise_floor: float = 0.0,
                 graphs: bool | None = None):
        """`noise_floor`: RMS of seeded Gaussian noise added to every input frame (the model's training floor).

        `graphs`: step through one CUDA graph per batch bucket (default: on a GPU unless NO_CUDA_GRAPH=1). True
        on a CPU (or with NO_CUDA_GRAPH=1) runs the same bucketed step eagerly; False steps exactly the active
        rows, eagerly."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.codec, self.gen, self.capacity = codec, generator, capacity
        self.device = generator.model.device
        self.noise_floor = noise_floor
        self._noise = torch.Generator()
        with torch.inference_mode():
            self.codec_state = codec.init_state(capacity, device=self.device, chunk=1)
            self.gen_state = generator.init_state(capacity)
        self.active = 0
        self.keep_logits = False  # also return each frame's text logits (diagnostics, backend comparisons)
        use = graphs_wanted(self.device) if graphs is None else graphs
        self._frames: FrameGraphs | None = None
        if use:
            dtype = codec.dtype
            self._frames = FrameGraphs(self._device_step, capacity, (1, self.frame_size), self.device, dtype,
                                       use_graphs=graphs_wanted(self.device))
            with torch.inference_mode():
                self._frames.capture(self._reset_all)

    def _reset_all(self) -> None:
        self.codec_state.reset()
        self.gen_state.reset()

    @property
    def frame_size(self) -> int:
        return self.codec.frame_size

    def add(self, seed: int) -> int:
        """Claim the next free row for a new session (fresh state, given sampling seed)."""
        if self.active >= self.capacity:
            raise RuntimeError("slot pool is full")
        row = self.active
        mask = torch.zeros(self.capacity, dtype=torch.bool, device=self.device)
        mask[row] = True
        with torch.inference_mode():
            self.codec_state.reset(mask)
            self.gen_state.reset(mask)
            self.gen_state.seeds[row] = seed
        self.active += 1
        return row

    def remove(self, row: int) -> int | None:
        """Free `row`; returns the row that was moved into it (the old last row), or None."""
        if not 0 <= row < self.active:
            raise IndexError(f"row {row} is not active")
        last = self.active - 1
        self.active -= 1
        if row == last:
            return None
        with torch.inference_mode():
            copy_slot(self.codec_state, last, row)
            copy_slot(self.gen_state, last, row)
        return last

    def _floor_noise(self, gen_state, samples: int) -> torch.Tensor:
        return floor_noise(self._noise, gen_state.seeds.tolist(), gen_state.offsets.tolist(), samples)

    def _device_step(self, wav: torch.Tensor, rows: int) -> dict[str, torch.Tensor]:
        """Everything on the device for pool rows [0, rows): wav [rows, 1, frame] -> output tensors."""
        codec_state = narrow_state(self.codec_state, rows)
        gen_state = narrow_state(self.gen_state, rows)
        user_codes = self.codec.encode_step(wav, codec_state)  # [rows, K, 1]
        out = self.gen.step(user_codes[..., 0], gen_state)
        # Rows inside the model delay hold placeholder ids (< 0): decode code 0 there, then discard it below.
        pcm = self.codec.decode_step(out.audio.clamp_min(0)[..., None], codec_state)[:, 0]
        # Silence those rows and restart their decoder so the first real frame decodes from a clean state.
        not_valid = ~out.valid
        self.codec.reset_decoder(codec_state, not_valid)
        pcm = torch.where(out.valid[:, None], pcm, torch.zeros_like(pcm)).float()
        result = dict(text=out.text, valid=out.valid, pcm=pcm, audio=out.audio, user=user_codes[..., 0])
        if self.keep_logits:
            result["text_logits"] = out.text_logits.float()
        if out.gate is not None:
            result["gate"] = out.gate
        return result

    @torch.inference_mode()
    def step(self, frames: np.ndarray) -> FrameResult:
        """frames [n, frame_size] float32 for the n active rows -> the model's frame for each."""
        n = self.active
        if frames.shape != (n, self.frame_size):
            raise ValueError(f"expected frames of shape {(n, self.frame_size)}, got {frames.shape}")
        x = torch.from_numpy(frames)
        if self.noise_floor > 0:
            x = x + self.noise_floor * self._floor_noise(narrow_state(self.gen_state, n), x.shape[-1])
        wav = x.to(self.device, self.codec.dtype)[:, None]
        out = self._frames.run(wav) if self._frames is not None else self._device_step(wav, n)
        host = {name: t.cpu().numpy() for name, t in out.items()}
        return FrameResult(text=host["text"], valid=host["valid"], pcm=host["pcm"], audio_codes=host["audio"],
                           user_codes=host["user"], gate=host.get("gate"), text_logits=host.get("text_logits"))

    @property
    def has_vision(self) -> bool:
        return self.gen.model.image_encoder is not None

    @torch.inference_mode()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """[3, S, S] -> image tokens [N, xa_dim]; touches no session state, so it may run beside `step`."""
        return self.gen.model.encode_image(image[None])[0]

    @torch.inference_mode()
    def set_image(self, row: int, tokens: torch.Tensor | None) -> None:
        """Swap slot `row`'s cached image keys/values (call between steps)."""
        self.gen.model.set_image(self.gen_state.backbone, row, tokens)
