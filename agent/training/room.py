"""What a real microphone does to a voice: distance, room reverberation, background noise, level, telephone band
and codec artefacts. `duplex data synth --room P` passes a share P of the user tracks through a random chain.

TTS voices are studio-clean and close-miked; users speak from across a room into laptop microphones, phones and
headsets. Each effect is plain NumPy (no dependency), drawn from its own RNG so that turning it on leaves the
questions, voices and timings of a seed unchanged, and every effect keeps the track's length (the words' times
stay exact):

- distance: a gentle high-frequency loss (one-pole low-pass) and a lower level;
- reverberation: a simulated impulse response (a direct path, a few early reflections, then exponentially
  decaying noise with RT60 0.15-0.9 s, darker as it decays), mixed at a drawn direct-to-reverberant ratio;
- background noise: white, pink or brown noise, or a hum with harmonics, at 5-30 dB below the speech;
- channel: telephone band (300-3400 Hz) with 8 kHz resampling and mu-law quantization (a G.711 call), or a
  coarse quantizer (a cheap codec), or the level and clipping of a hot microphone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

RATE = 24_000


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def _fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = x.size + h.size - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: x.size]
    return y.astype(np.float32)


def one_pole_lowpass(x: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """A first-order low-pass as a short FIR (its impulse response, truncated), so it runs as one convolution."""
    a = float(np.exp(-2 * np.pi * cutoff_hz / RATE))
    taps = (1 - a) * a ** np.arange(int(np.ceil(np.log(1e-4) / np.log(a))) + 1)
    return _fft_convolve(x, taps.astype(np.float32))


def band_limit(x: np.ndarray, low_hz: float, high_hz: float) -> np.ndarray:
    """Zero the spectrum outside [low_hz, high_hz] with short raised-cosine edges."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1 / RATE)
    gain = np.clip((f - low_hz * 0.7) / (low_hz * 0.3), 0, 1) * np.clip((high_hz * 1.1 - f) / (high_hz * 0.1), 0, 1)
    return np.fft.irfft(spec * gain, x.size).astype(np.float32)


def impulse_response(rng: np.random.Generator, rt60: float, early: int = 4) -> np.ndarray:
    """A room: direct path at 0, a few early reflections (2-25 ms), then a decaying diffuse tail."""
    n = int(min(rt60, 1.2) * RATE)
    t = np.arange(n) / RATE
    tail = rng.normal(0, 1, n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    # the tail gets darker as it decays (air and walls absorb highs): blend a low-passed copy in over time
    dark = one_pole_lowpass(tail.astype(np.float32), 2500.0)
    mix = np.clip(t / max(rt60 * 0.5, 1e-3), 0, 1)
    tail = (1 - mix) * tail + mix * dark
    tail[: int(0.005 * RATE)] = 0  # the diffuse field arrives after the first reflections
    h = tail * 0.25
    h[0] = 1.0
    for _ in range(early):
        h[int(rng.uniform(0.002, 0.025) * RATE)] += rng.uniform(0.2, 0.6) * rng.choice([-1, 1])
    return (h / np.sqrt(np.sum(h**2))).astype(np.float32)


def coloured_noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    if colour == "hum":
        t = np.arange(n) / RATE
        base = rng.choice([50.0, 60.0])
        x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6.3))
                for k in (1, 2, 3, 5))
        return (x + 0.05 * rng.normal(0, 1, n)).astype(np.float32)
    white = rng.normal(0, 1, n)
    if colour == "white":
        return white.astype(np.float32)
    spec = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(n, 1 / RATE), 20.0)
    spec /= f ** (0.5 if colour == "pink" else 1.0)
    return np.fft.irfft(spec, n).astype(np.float32)


def mu_law(x: np.ndarray, bits: int = 8) -> np.ndarray:
    mu = 2**bits - 1
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    y = np.round((y + 1) / 2 * mu) / mu * 2 - 1
    return (np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu).astype(np.float32)


def resample_through(x: np.ndarray, rate: int) -> np.ndarray:
    """Down to `rate` and back up (linear interpolation after a band limit at the lower Nyquist)."""
    lim = band_limit(x, 1.0, rate / 2 * 0.9)
    n = int(x.size * rate / RATE)
    low = np.interp(np.linspace(0, x.size - 1, n), np.arange(x.size), lim)
    return np.interp(np.linspace(0, n - 1, x.size), np.arange(n), low).astype(np.float32)


@dataclass
class RoomAugment:
    """Draws a microphone-and-room chain per track; `share` of the tracks get one, the rest pass unchanged."""

    rng: random.Random
    share: float = 0.5

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, str]:
        """(the track through a drawn chain, a label naming the effects) for a float32 track in [-1, 1]."""
        if x.size == 0 or self.rng.random() >= self.share:
            return x, ""
        g = np.random.default_rng(self.rng.randrange(1 << 31))
        level = _rms(x)
        y, parts = x.astype(np.float32), []
        if self.rng.random() < 0.4:  # distance: highs roll off
            y = one_pole_lowpass(y, self.rng.uniform(2500, 7000))
            parts.append("far")
        if self.rng.random() < 0.65:
            rt60 = self.rng.uniform(0.15, 0.9)
            wet = _fft_convolve(y, impulse_response(g, rt60))
            drr = 10 ** (self.rng.uniform(-3, 12) / 20)  # direct-to-reverberant ratio
            y = (drr * y + wet) / (drr + 1)
            parts.append(f"reverb{rt60:.1f}")
        if self.rng.random() < 0.5:
            colour = self.rng.choice(["white", "pink", "brown", "hum"])
            noise = coloured_noise(g, y.size, colour)
            snr_db = self.rng.uniform(5, 30)
            y = y + noise * (_rms(y) / _rms(noise) * 10 ** (-snr_db / 20))
            parts.append(f"{colour}{snr_db:.0f}dB")
        roll = self.rng.random()
        peak = max(np.abs(y).max(), 1e-6)  # mu-law companding wants [-1, 1]; the level is set below anyway
        if roll < 0.25:  # a phone call: 300-3400 Hz, 8 kHz, G.711 mu-law
            y = mu_law(np.clip(resample_through(band_limit(y / peak, 300, 3400), 8000), -1, 1))
            parts.append("phone")
        elif roll < 0.4:  # a cheap codec: 16 kHz band, coarse quantization
            y = mu_law(np.clip(resample_through(y / peak, 16000), -1, 1), bits=self.rng.choice([6, 7]))
            parts.append("codec")
        # level: quiet laptops to hot headsets (a few hot ones clip)
        y = y * (level / max(_rms(y), 1e-9)) * self.rng.uniform(0.4, 1.8)
        return np.clip(y, -1, 1).astype(np.float32), "+".join(parts)
