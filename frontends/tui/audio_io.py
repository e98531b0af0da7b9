"""Audio devices for the terminal client, behind one small interface so the app runs without hardware.

`SoundDeviceIO` opens one full-duplex PortAudio stream (needs the system library libportaudio2). Its callback
never blocks: input goes to the event loop with `call_soon_threadsafe`, output comes from a bounded buffer
and is silence when empty. `FileIO` plays a file as the microphone in real time and records the replies.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.codec import SAMPLE_RATE as RATE

BLOCK = 480  # 20 ms


class AudioIO:
    """Interface: `start(loop, on_input)`, `play(pcm)`, `stop()`; levels for the meters."""

    input_level = 0.0
    output_level = 0.0
    underruns = 0

    def start(self, loop: asyncio.AbstractEventLoop, on_input: Callable[[np.ndarray], None]) -> None:
        raise NotImplementedError

    def play(self, pcm: np.ndarray) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class _OutputRing:
    """Bounded playback buffer shared with the audio thread (drops the oldest beyond `max_s`)."""

    def __init__(self, max_s: float = 0.5):
        self._lock = threading.Lock()
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._size = 0
        self._max = int(max_s * RATE)
        self.dropped = 0

    def push(self, pcm: np.ndarray) -> None:
        with self._lock:
            self._chunks.append(pcm.astype(np.float32))
            self._size += pcm.size
            while self._size > self._max and self._chunks:
                excess = self._size - self._max
                old = self._chunks[0]
                if old.size <= excess:
                    self._chunks.popleft()
                    cut = old.size
                else:
                    self._chunks[0] = old[excess:]
                    cut = excess
                self._size -= cut
                self.dropped += cut

    def pull(self, n: int) -> tuple[np.ndarray, bool]:
        out = np.zeros(n, np.float32)
        filled = 0
        with self._lock:
            while filled < n and self._chunks:
                c = self._chunks[0]
                take = min(n - filled, c.size)
                out[filled:filled + take] = c[:take]
                filled += take
                if take == c.size:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = c[take:]
                self._size -= take
        return out, filled == n


def _level(x: np.ndarray) -> float:
    return float(min(1.0, np.sqrt(np.mean(np.square(x))) * 4)) if x.size else 0.0


class SoundDeviceIO(AudioIO):
    """`aec`: cancel the model's own voice from the microphone (on by default in `duplex chat`): what the
    callback plays and what it records are handed to the canceller together, with PortAudio's measured
    input + output latency as the playback-to-capture delay."""

    def __init__(self, input_device=None, output_device=None, aec: bool = False):
        try:
            import sounddevice as sd
        except OSError as exc:  # raised when the PortAudio library is missing
            raise RuntimeError("sounddevice needs the PortAudio library: sudo apt-get install libportaudio2") from exc
        except ImportError as exc:
            raise RuntimeError("live audio needs sounddevice: pip install 'duplex-agent[tui]'") from exc
        self._sd = sd
        self.device = (input_device, output_device)
        self._ring = _OutputRing()
        self._stream = None
        self.muted = False
        self.canceller = None
        if aec:
            from agent.aec import EchoCanceller

            self.canceller = EchoCanceller()

    def start(self, loop, on_input) -> None:
        canceller = self.canceller

        def deliver(mic: np.ndarray, played: np.ndarray) -> None:  # on the event loop
            on_input(canceller.process(mic, played))

        def callback(indata, outdata, frames, time_info, status):  # PortAudio thread: never block here
            mono = indata[:, 0].copy()
            self.input_level = _level(mono)
            out, full = self._ring.pull(frames)
            if not full:
                self.underruns += 1
            self.output_level = _level(out)
            outdata[:, 0] = out
            if canceller is None:
                loop.call_soon_threadsafe(on_input, mono)
            else:
                loop.call_soon_threadsafe(deliver, mono, out)

        self._stream = self._sd.Stream(samplerate=RATE, blocksize=BLOCK, device=self.device, channels=1,
                                       dtype="float32", callback=callback, latency="low")
        self._stream.start()
        if canceller is not None:  # measured by PortAudio for this stream: capture + playback latency
            latency_in, latency_out = self._stream.latency
            canceller.delay_ms = int(round((latency_in + latency_out) * 1000))

    def play(self, pcm: np.ndarray) -> None:
        self._ring.push(pcm)

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


class FileIO(AudioIO):
    """A file (or array) as the microphone, paced in real time, followed by `tail` s of silence."""

    def __init__(self, source: str | Path | np.ndarray, output_file: str | Path | None = None, tail: float = 2.0):
        if isinstance(source, np.ndarray):
            samples = source.astype(np.float32)
        else:
            from agent.audio import load_audio

            samples = load_audio(source).samples
        self.samples = np.concatenate([samples, np.zeros(int(tail * RATE), np.float32)])
        self.output_file = output_file
        self.recorded: list[np.ndarray] = []
        self._task: asyncio.Task | None = None
        self.finished = asyncio.Event()

    def start(self, loop, on_input) -> None:
        async def feed():
            t0 = loop.time()
            for i in range(0, self.samples.size, BLOCK):
                chunk = self.samples[i:i + BLOCK]
                self.input_level = _level(chunk)
                on_input(chunk)
                delay = t0 + (i + BLOCK) / RATE - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            self.input_level = 0.0
            self.finished.set()

        self._task = loop.create_task(feed())

    def play(self, pcm: np.ndarray) -> None:
        self.output_level = _level(pcm)
        self.recorded.append(pcm.astype(np.float32))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.output_file and self.recorded:
            from agent.audio import write_wav

            write_wav(self.output_file, np.concatenate(self.recorded))


def list_devices() -> str:
    try:
        import sounddevice as sd
    except (OSError, ImportError) as exc:
        return f"no audio devices available ({exc}); install libportaudio2 and sounddevice"
    devices = sd.query_devices()
    return str(devices) if len(devices) else "no audio devices found (use --input-file/--output-file)"
