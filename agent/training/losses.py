"""Reconstruction losses for the codec: waveform L1 and multi-resolution log-mel L1."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from models.codec import SAMPLE_RATE


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_fft: int, n_mels: int, rate: int = SAMPLE_RATE) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1] triangular HTK-mel filters."""
    def hz_to_mel(f):
        return 2595 * np.log10(1 + f / 700)

    def mel_to_hz(m):
        return 700 * (10 ** (m / 2595) - 1)

    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(rate / 2), n_mels + 2))
    fb = np.zeros((n_mels, freqs.size), np.float32)
    for i in range(n_mels):
        lo, mid, hi = edges[i:i + 3]
        fb[i] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return torch.from_numpy(fb)


def log_mel(wav: torch.Tensor, n_fft: int, n_mels: int) -> torch.Tensor:
    spec = torch.stft(wav, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft, device=wav.device),
                      return_complex=True).abs().pow(2)
    return torch.log(mel_filterbank(n_fft, n_mels).to(wav.device) @ spec + 1e-5)


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """pred/target [B, T] -> total, parts."""
    wave = F.l1_loss(pred, target)
    mel = sum(F.l1_loss(log_mel(pred, n, m), log_mel(target, n, m)) for n, m in ((256, 32), (512, 64), (1024, 64),
                                                                                 (2048, 80))) / 4
    return 0.1 * wave + mel, {"wave": float(wave.detach()), "mel": float(mel.detach())}
