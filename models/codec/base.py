"""The interface every streaming codec of the engine keeps: 24 kHz mono <-> integer codes at 12.5 Hz.

The slot pool, the frame graphs, the LM training and the CLI use only this, so the Mimi-compatible neural codec
and the vocoder codec are interchangeable. State is explicit (one row per batch slot, `init_state`), and the
offline calls here are the streaming calls over a fresh state, so both give the same codes and audio.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StreamingCodec(nn.Module):
    """Subclasses set `cfg` (with sample_rate, frame_size, num_codebooks, with_codebooks) and implement
    `max_codebooks`, `bins`, `device`, `dtype`, `init_state`, `encode_step`, `decode_step`, `reset_decoder`."""

    cfg: object

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def frame_size(self) -> int:
        return self.cfg.frame_size

    @property
    def num_codebooks(self) -> int:
        return self.cfg.num_codebooks

    @property
    def max_codebooks(self) -> int:
        raise NotImplementedError

    @property
    def bins(self) -> int:
        raise NotImplementedError

    @property
    def semantic_codebooks(self) -> int:
        """Codebooks among `num_codebooks` that carry what was said rather than sound (the vocoder codec's
        semantic token, last); the decoder ignores them."""
        return 0

    @property
    def delay(self) -> int:
        """Samples by which decoded audio lags the input."""
        return 0

    def set_num_codebooks(self, n: int) -> None:
        check_codebooks(n, self.max_codebooks)
        self.cfg = self.cfg.with_codebooks(n)

    # -- checks -----------------------------------------------------------------------------------
    def _check_wav(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, T] or [B, 1, T] -> [B, 1, T] in the codec's dtype."""
        if wav.dim() == 2:
            wav = wav[:, None]
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected mono audio shaped [B, 1, T] or [B, T], got {tuple(wav.shape)}")
        return wav.to(self.dtype)

    def _check_frames(self, wav: torch.Tensor) -> torch.Tensor:
        wav = self._check_wav(wav)
        T = wav.shape[-1]
        if T == 0 or T % self.frame_size:
            raise ValueError(f"streaming encode needs a positive multiple of {self.frame_size} samples, got {T}")
        return wav

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 3 or codes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"expected integer codes [B, K, T], got {codes.dtype} {tuple(codes.shape)}")
        if not 1 <= codes.shape[1] <= self.max_codebooks:
            raise ValueError(f"codes have {codes.shape[1]} codebooks; this codec has {self.max_codebooks}")

    def validate_codes(self, codes: torch.Tensor) -> None:
        """Shape and value checks for untrusted codes (host sync: not for the per-frame hot path)."""
        self._check_codes(codes)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.bins):
            raise ValueError(f"code values must lie in [0, {self.bins}): "
                             "were these codes made with other codec weights?")

    # -- offline (streaming over all frames on a fresh state) -------------------------------------
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: [B, 1, T] or [B, T] at 24 kHz -> codes [B, num_codebooks, ceil(T / frame_size)] (zero-padded)."""
        wav = self._check_wav(wav)
        pad = (-wav.shape[-1]) % self.frame_size
        if pad:
            wav = F.pad(wav, (0, pad))
        if wav.shape[-1] == 0:
            raise ValueError("cannot encode empty audio")
        return self.encode_step(wav, self.init_state(wav.shape[0], chunk=64))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> wav [B, 1, T * frame_size]."""
        self.validate_codes(codes)
        return self.decode_step(codes, self.init_state(codes.shape[0], chunk=64))


def check_codebooks(n: int, most: int) -> None:
    if not 1 <= n <= most:
        raise ValueError(f"num_codebooks must be in [1, {most}], got {n}")
