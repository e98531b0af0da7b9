"""Test media: a spoken question as a WAV, a rendered scene as a Y4M camera file, and aiortc tracks that play them."""

from __future__ import annotations

import asyncio
import fractions
from pathlib import Path

import numpy as np


def spoken(text: str, lead_s: float = 0.5, tail_s: float = 6.0) -> np.ndarray:
    """float32 24 kHz: silence, `text` in the held-out test voice (flite rms), silence."""
    from agent.training.tts import HELD_OUT_VOICE, CachedTTS

    speech = CachedTTS()(text, HELD_OUT_VOICE)
    return np.concatenate([np.zeros(int(lead_s * 24000), np.float32), speech,
                           np.zeros(int(tail_s * 24000), np.float32)]).astype(np.float32)


def to_48k(x: np.ndarray) -> np.ndarray:
    from agent.pcm import StreamResampler

    r = StreamResampler(24000, 48000)
    return np.concatenate([r(x), r.flush()])


def scene(size: int = 256) -> np.ndarray:
    """Three red circles: the scene the vision tests show the model."""
    from agent.training.scenes import render

    return render("circle", "red", 3, size=size, seed=0)


def write_y4m(path: Path, rgb: np.ndarray, frames: int = 30, fps: int = 30) -> Path:
    """A Y4M video of one still image, for Chromium's --use-file-for-fake-video-capture."""
    import av

    h, w = rgb.shape[:2]
    yuv = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
    planes = b"".join(bytes(p) for p in yuv.planes)
    assert len(planes) == w * h * 3 // 2
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + planes)
    return path


def audio_track(pcm24k: np.ndarray, loop: bool = False):
    """An aiortc audio track playing `pcm24k` in real time as 20 ms frames at 48 kHz, then silence."""
    from aiortc import MediaStreamTrack
    from av import AudioFrame

    pcm = (np.clip(to_48k(pcm24k), -1, 1) * 32767).astype(np.int16)

    class Player(MediaStreamTrack):
        kind = "audio"

        def __init__(self):
            super().__init__()
            self.pts, self.t0 = 0, None

        async def recv(self):
            loop_ = asyncio.get_running_loop()
            self.t0 = self.t0 or loop_.time()
            wait = self.t0 + self.pts / 48000 - loop_.time()
            if wait > 0:
                await asyncio.sleep(wait)
            n, i = 960, self.pts % pcm.size if loop else self.pts
            chunk = pcm[i:i + n]
            chunk = np.concatenate([chunk, np.zeros(n - chunk.size, np.int16)])
            f = AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
            f.sample_rate, f.pts, f.time_base = 48000, self.pts, fractions.Fraction(1, 48000)
            self.pts += n
            return f

    return Player()


def collect_audio(pc, peaks: list) -> None:
    """Keep the peak of every audio frame the peer connection `pc` receives (its tracks end with the connection)."""

    @pc.on("track")
    def on_track(track):
        async def pull():
            while True:
                try:
                    f = await track.recv()
                except Exception:  # noqa: BLE001 - the track ends with the connection
                    return
                peaks.append(np.abs(f.to_ndarray()).max())

        asyncio.ensure_future(pull())


def video_track(rgb: np.ndarray, fps: int = 15):
    """An aiortc camera track showing one still image."""
    from aiortc import VideoStreamTrack
    from av import VideoFrame

    class Camera(VideoStreamTrack):
        async def recv(self):
            pts, time_base = await self.next_timestamp()
            frame = VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            return frame

    return Camera()


def stereo_conversation(path: Path, agent_words: list[str], user_words: list[str], gap_s: float = 0.12,
                        rate: int = 24_000) -> list[tuple[float, str]]:
    """A stereo WAV (left: the agent, flite slt; right: the user, espeak-ng): the user speaks, then the agent,
    word by word with known onsets. Returns the agent's (onset in seconds, word)."""
    import wave

    from agent.training.tts import AGENT_VOICE, Voice, synthesize

    def trimmed(word: str, voice) -> np.ndarray:
        x = synthesize(word, voice)
        loud = np.nonzero(np.abs(x) > 0.02)[0]
        return x[loud[0]:loud[-1] + 1]

    def say(words, voice, start):
        parts, pos = [], start
        for w in words:
            x = trimmed(w, voice)
            parts.append((pos, w, x))
            pos += x.size + int(gap_s * rate)
        return parts, pos

    user, end = say(user_words, Voice("espeak", "en-us", 150), int(0.5 * rate))
    agent, end = say(agent_words, AGENT_VOICE, end + int(0.6 * rate))
    st = np.zeros((end + rate, 2), np.float32)
    for ch, parts in ((0, agent), (1, user)):
        for pos, _, x in parts:
            st[pos:pos + x.size, ch] += x
    pcm = (np.clip(st, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return [(pos / rate, w) for pos, w, _ in agent]
