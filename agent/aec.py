"""Acoustic echo cancellation: keep the model from hearing (and answering) its own voice on open speakers.

We use WebRTC's audio processing module (AEC3 with its own delay estimator, plus a high-pass filter) through
LiveKit's maintained Python build (`livekit`, extra `duplex-agent[aec]`): of what the registries offer it is the
one that ships prebuilt wheels and is kept up to date by a team running it in production (speexdsp's binding and
`aec-audio-processing` build from source; speexdsp's echo canceller is older and weaker on long room tails).

The far end (reference) is what the model's voice sounds like as it leaves the speaker; the near end is the
microphone. Where both come from one full-duplex device callback (the terminal client), the delay between them
is what PortAudio measures for that stream (input + output latency) and is handed to AEC3 as its starting point;
AEC3 keeps estimating it from the signals either way.
"""

from __future__ import annotations

import collections

import numpy as np

RATE = 24_000  # the engine's rate; AEC3 runs at it natively
BLOCK = RATE // 100  # AEC3 works on 10 ms frames


def _apm_module():
    try:
        from livekit import rtc
    except ImportError as exc:
        raise ImportError("echo cancellation needs LiveKit's build of WebRTC's audio processing: "
                          "pip install 'duplex-agent[aec]'") from exc
    return rtc


class _Blocks:
    """Cuts a float32 stream into 10 ms int16 blocks, keeping the remainder for next time."""

    def __init__(self):
        self._rest = np.zeros(0, np.float32)

    def __call__(self, pcm: np.ndarray) -> list[np.ndarray]:
        x = np.concatenate([self._rest, np.asarray(pcm, np.float32).reshape(-1)])
        n = x.size // BLOCK
        self._rest = x[n * BLOCK:]
        return [(np.clip(x[i * BLOCK:(i + 1) * BLOCK], -1, 1) * 32767).astype(np.int16) for i in range(n)]


class EchoCanceller:
    """`far(played)` for everything the speaker plays, `near(mic) -> cleaned mic`, both float32 mono 24 kHz.

    The output of `near` lags its input by less than 10 ms (whole 10 ms blocks are processed) and has the same
    total length over time. `delay_ms`: the playback-to-capture delay where it is known (a measured device
    latency); AEC3 refines it from the signals.
    """

    def __init__(self, delay_ms: float = 0.0, noise_suppression: bool = False, residual_gate: float = 0.1,
                 gate_window_s: float = 0.5):
        """`residual_gate`: while the model is playing, a cleaned block quieter than this fraction of the loudest
        recent playback block is taken for residual echo and attenuated 30 dB (a non-linear processor, as
        speakerphones have): a full-duplex model stops talking at any voice it hears, so even the last -30 dB
        of its own echo must go. The user's voice at a normal level passes (a barge-in still works); 0 turns
        the gate off."""
        rtc = _apm_module()
        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True,
                                              noise_suppression=noise_suppression)
        self.delay_ms = int(round(delay_ms))
        self._far, self._near = _Blocks(), _Blocks()
        self.far_samples = 0
        self.near_samples = 0
        self.residual_gate = residual_gate
        self._far_levels = collections.deque(maxlen=max(1, int(gate_window_s * 100)))  # per 10 ms block
        self.gated_blocks = 0

    def _frame(self, block: np.ndarray):
        return self._rtc.AudioFrame(block.tobytes(), RATE, 1, BLOCK)

    def far(self, pcm: np.ndarray) -> None:
        for block in self._far(pcm):
            self._apm.process_reverse_stream(self._frame(block))
            self._far_levels.append(float(np.sqrt(np.mean((block / 32767.0) ** 2))))
            self.far_samples += BLOCK

    def near(self, pcm: np.ndarray) -> np.ndarray:
        out = []
        for block in self._near(pcm):
            frame = self._frame(block)
            self._apm.set_stream_delay_ms(self.delay_ms)
            self._apm.process_stream(frame)
            cleaned = np.frombuffer(frame.data, np.int16).astype(np.float32) / 32767
            if self.residual_gate > 0 and self._far_levels:
                loudest = max(self._far_levels)
                if loudest > 1e-3 and np.sqrt(np.mean(cleaned ** 2)) < self.residual_gate * loudest:
                    cleaned = cleaned * 0.03
                    self.gated_blocks += 1
            out.append(cleaned)
            self.near_samples += BLOCK
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def process(self, mic: np.ndarray, played: np.ndarray) -> np.ndarray:
        """One full-duplex device block: what was played in it, and what the microphone took in."""
        self.far(played)
        return self.near(mic)


def erle_db(mic: np.ndarray, cleaned: np.ndarray, echo_only: np.ndarray | None = None) -> float:
    """Echo return loss enhancement: how much quieter the echo is after cancellation (dB), over `echo_only`
    (a mask of samples where only the echo is present) or everywhere."""
    n = min(mic.size, cleaned.size)
    m, c = mic[:n], cleaned[:n]
    if echo_only is not None:
        m, c = m[echo_only[:n]], c[echo_only[:n]]
    return float(10 * np.log10(np.mean(m ** 2) / max(np.mean(c ** 2), 1e-12)))
