"""Audio at the edges: decode any common file/format to float32 mono 24 kHz, and write WAV files.

Inside the engine audio is always float32 mono 24 kHz; every conversion happens here (PyAV does the
decoding and resampling).
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.codec import SAMPLE_RATE

TARGET_RATE = SAMPLE_RATE


class AudioError(ValueError):
    """Audio input that cannot be used, with a message that says how to fix it."""


@dataclass
class LoadedAudio:
    samples: np.ndarray  # float32 mono at `sample_rate`
    sample_rate: int
    source_rate: int
    source_channels: int
    notes: list[str] = field(default_factory=list)


def load_audio(path: str | Path, target_rate: int = TARGET_RATE) -> LoadedAudio:
    """Read an audio file, downmix to mono and resample to `target_rate`; notes say what was converted."""
    samples, source_rate, channels = _decode(path, target_rate, keep_channels=False)
    notes = []
    if channels > 1:
        notes.append(f"downmixed {channels} channels to mono")
    if source_rate != target_rate:
        notes.append(f"resampled {source_rate} Hz -> {target_rate} Hz")
    return LoadedAudio(samples[0], target_rate, source_rate, channels, notes)


def load_channels(path: str | Path, target_rate: int = TARGET_RATE) -> tuple[np.ndarray, int]:
    """Read an audio file keeping its channels apart (mono or stereo), resampled to `target_rate`:
    ([channels, samples] float32, the file's own rate)."""
    samples, source_rate, _ = _decode(path, target_rate, keep_channels=True)
    return samples, source_rate


def _decode(path: str | Path, target_rate: int, keep_channels: bool) -> tuple[np.ndarray, int, int]:
    """([channels or 1, samples] float32 at `target_rate`, the file's rate, the file's channel count)."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioError(f"expected an audio file, got a directory: {path}")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file is empty: {path}")
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types
        raise AudioError(f"cannot read {path} as audio ({exc}); is it a valid WAV/FLAC/OGG/MP3 file?") from exc
    with container:
        if not container.streams.audio:
            raise AudioError(f"{path} contains no audio stream")
        stream = container.streams.audio[0]
        source_rate = stream.codec_context.sample_rate or stream.rate
        channels = stream.codec_context.channels or 1
        if keep_channels and channels > 2:
            raise AudioError(f"{path} has {channels} channels; give stereo (agent + user) or mono files")
        layout = "stereo" if keep_channels and channels == 2 else "mono"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=target_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                chunks += [out.to_ndarray() for out in resampler.resample(frame)]
            chunks += [out.to_ndarray() for out in resampler.resample(None)]
        except Exception as exc:  # noqa: BLE001
            raise AudioError(f"{path} is corrupt or truncated: {exc}") from exc
    rows = 2 if layout == "stereo" else 1
    samples = np.concatenate(chunks, axis=1).astype(np.float32) if chunks else np.zeros((rows, 0), np.float32)
    if samples.shape[1] == 0:
        raise AudioError(f"{path} decodes to no audio samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{path} contains NaN or infinite samples")
    return samples, source_rate, channels


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = TARGET_RATE) -> None:
    """Write float mono samples as 16-bit PCM WAV (clipped to [-1, 1])."""
    pcm = (np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0) * 32767.0).astype("<i2")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
