"""New speakers drawn in the vocoder codec's feature space, for LM training data.

Why: the model's hardest job is to understand a voice it never heard, and every new kind of training voice paid
(rounds 2-9). The TTS engines available offline are few, but a speaker differs from another mostly in what the
vocoder codec measures: where the formants sit on the mel axis (vocal tract length), the spectral tilt and the
colour of the channel, and the pitch. Drawing those per dialogue and re-quantizing the user track gives the LM
code sequences of speakers no engine produced, at the cost of one more quantization (the analysis is shared).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpeakerWarp:
    """One drawn speaker: applied to every 20 ms feature vector of a dialogue's user track."""

    shift: float = 0.0  # formants moved this many mel bands up (fractional; edges repeat)
    tilt: float = 0.0  # log-power added from the lowest to the highest band (nats, centred)
    ripple: tuple[tuple[float, float, float], ...] = ()  # smooth channel colour: (amplitude, cycles, phase)
    pitch: float = 1.0  # f0 multiplied by this

    @classmethod
    def draw(cls, rng: random.Random, shift: float = 1.5, tilt: float = 1.5, ripple: float = 0.35,
             pitch: tuple[float, float] = (0.8, 1.25)) -> SpeakerWarp:
        waves = tuple((rng.uniform(0, ripple), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * math.pi)) for _ in range(2))
        return cls(rng.uniform(-shift, shift), rng.uniform(-tilt, tilt), waves,
                   math.exp(rng.uniform(math.log(pitch[0]), math.log(pitch[1]))))

    def apply(self, feats: torch.Tensor, n_mels: int) -> torch.Tensor:
        """feats [..., n_mels + 2] (log mel energies, log f0, voicing) -> the same speech said by this speaker."""
        mel, log_f0, voicing = feats[..., :n_mels], feats[..., n_mels], feats[..., n_mels + 1]
        bands = torch.arange(n_mels, dtype=feats.dtype, device=feats.device)
        src = (bands - self.shift).clamp(0, n_mels - 1)  # output band b reads input band b - shift
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=n_mels - 1)
        frac = src - lo.to(feats.dtype)
        mel = mel[..., lo] * (1 - frac) + mel[..., hi] * frac
        x = bands / max(1, n_mels - 1)
        colour = self.tilt * (x - 0.5)
        for amp, cycles, phase in self.ripple:
            colour = colour + amp * torch.sin(2 * math.pi * cycles * x + phase)
        # only where there is speech-like energy would a speaker's colour show, but a channel colours the noise
        # too: apply everywhere, which is what a different microphone and room also do
        mel = mel + colour
        voiced = voicing > 0
        log_f0 = torch.where(voiced, log_f0 + math.log(self.pitch), log_f0)
        return torch.cat([mel, log_f0[..., None], voicing[..., None]], -1)


@torch.no_grad()
def encode_warped(codec, wav: torch.Tensor, warps: list[list[SpeakerWarp]]) -> list[torch.Tensor]:
    """wav [B, T] (T a multiple of the frame size) -> codes [B, K, T / frame] for the original and for each
    column of `warps` (warps[b][j]: the j-th speaker drawn for row b). The analysis runs once."""
    from models.codec.vocoder import VocoderCodec

    if not isinstance(codec, VocoderCodec):
        raise ValueError("speaker warps need the vocoder codec (features it can re-quantize)")
    B = wav.shape[0]
    feats = codec.features_step(wav, codec.init_state(B, device=wav.device))  # [B, N, F]
    out = [codec.encode_features(feats)]
    for j in range(len(warps[0]) if warps else 0):
        warped = torch.stack([warps[b][j].apply(feats[b], codec.cfg.n_mels) for b in range(B)])
        out.append(codec.encode_features(warped))
    return out
