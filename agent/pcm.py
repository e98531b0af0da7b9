"""Live PCM at the edge: any dtype / layout / rate in, float32 mono 24 kHz out, with typed errors.

Chunks of a live stream are resampled with one stateful PyAV resampler per stream, so chunk boundaries
leave no clicks and no samples are lost.
"""

from __future__ import annotations

import numpy as np

from agent.audio import TARGET_RATE
from agent.errors import InvalidAudioError

MAX_CHANNELS = 8
_SCALE = {np.dtype("int16"): 32768.0, np.dtype("int32"): 2147483648.0, np.dtype("int8"): 128.0}


def to_float_mono(pcm, max_samples: int) -> np.ndarray:
    """Validate and convert one chunk to float32 mono (rate unchanged).

    Accepts numpy arrays, torch tensors, lists and raw little-endian int16 bytes; shape (T,), (T, C)
    (sounddevice's layout) or (C, T) when C <= 8 < T.
    """
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        if len(pcm) % 2:
            raise InvalidAudioError("raw PCM bytes must be 16-bit little-endian (an even number of bytes)")
        pcm = np.frombuffer(bytes(pcm), dtype="<i2")
    elif hasattr(pcm, "detach"):  # torch.Tensor without importing torch here
        pcm = pcm.detach().cpu().numpy()
    try:
        arr = np.asarray(pcm)
    except Exception as exc:  # noqa: BLE001
        raise InvalidAudioError(f"audio must be an array of samples, got {type(pcm).__name__}") from exc
    if arr.dtype == np.uint8:
        arr = (arr.astype(np.float32) - 128.0) / 128.0
    elif arr.dtype in _SCALE:
        arr = arr.astype(np.float32) / _SCALE[arr.dtype]
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
    else:
        raise InvalidAudioError(f"unsupported audio dtype {arr.dtype}: send float32/float64 in [-1, 1], "
                                "or int16/int32/uint8 PCM")
    if arr.ndim == 2:
        if arr.shape[1] <= MAX_CHANNELS:
            arr = arr.mean(axis=1)
        elif arr.shape[0] <= MAX_CHANNELS:
            arr = arr.mean(axis=0)
        else:
            raise InvalidAudioError(f"cannot tell channels from samples in shape {arr.shape}; send (T,) or (T, C)")
    elif arr.ndim != 1:
        raise InvalidAudioError(f"audio must be 1-D (T,) or 2-D (T, C), got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidAudioError("empty audio chunk")
    if arr.size > max_samples:
        raise InvalidAudioError(f"audio chunk of {arr.size} samples is larger than the {max_samples} allowed "
                                "per call; send it in smaller chunks")
    if not np.isfinite(arr).all():
        raise InvalidAudioError("audio contains NaN or infinite samples")
    return np.ascontiguousarray(arr, dtype=np.float32)


class StreamResampler:
    """Stateful float32 mono resampler for one live stream (PyAV/libswresample)."""

    def __init__(self, source_rate: int, target_rate: int = TARGET_RATE):
        if not 1000 <= source_rate <= 384_000:
            raise InvalidAudioError(f"sample rate {source_rate} Hz is not a plausible audio rate")
        self.source_rate, self.target_rate = source_rate, target_rate
        self._resampler = None
        if source_rate != target_rate:
            import av

            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
        self._pts = 0

    def __call__(self, mono: np.ndarray) -> np.ndarray:
        if self._resampler is None:
            return mono
        import av

        frame = av.AudioFrame.from_ndarray(mono[None, :], format="flt", layout="mono")
        frame.sample_rate = self.source_rate
        frame.pts = self._pts
        self._pts += mono.size
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(None)]
        self._resampler = None
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
