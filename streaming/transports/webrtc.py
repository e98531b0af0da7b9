"""WebRTC (aiortc): browser mic + camera in, the model's voice out, text and stats over a data channel.

Signalling is one HTTP round trip (`POST /offer` with the browser's SDP; the answer carries all candidates).
No STUN server is used unless configured. The outbound track is paced by its own clock and plays silence when
the model has nothing queued; its buffer is bounded, so latency cannot grow over a long session.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import time

import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack

from agent.errors import DuplexError, SessionLimitError
from agent.events import AudioOut, Closed, Error, Stats, TextToken, Transcript
from models.codec import SAMPLE_RATE
from streaming.transports.keys import SERVER

log = logging.getLogger("duplex.webrtc")

OUT_RATE = 48_000
PTIME = 0.02


class OutboundAudio(MediaStreamTrack):
    """20 ms s16 mono frames at 48 kHz on a wall clock; silence when empty; at most `max_s` buffered."""

    kind = "audio"

    def __init__(self, max_s: float = 0.4):
        super().__init__()
        self.n = int(OUT_RATE * PTIME)
        self._buf = np.zeros(0, np.int16)
        self._max = int(max_s * OUT_RATE)
        self._t0: float | None = None
        self._pts = 0
        self.dropped_samples = 0
        import av

        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=OUT_RATE)

    def write(self, pcm24k: np.ndarray) -> None:
        import av

        frame = av.AudioFrame.from_ndarray(pcm24k[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if out:
            self._buf = np.concatenate([self._buf, *out])
        if self._buf.size > self._max:
            self.dropped_samples += self._buf.size - self._max
            self._buf = self._buf[-self._max:]

    def clear(self) -> None:
        self._buf = np.zeros(0, np.int16)

    async def recv(self):
        import av
        from aiortc.mediastreams import MediaStreamError

        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            self._pts += self.n
            delay = self._t0 + self._pts / OUT_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.2:  # the loop stalled: resync instead of bursting to catch up
                self._t0 = time.monotonic() - self._pts / OUT_RATE
        chunk, self._buf = self._buf[: self.n], self._buf[self.n:]
        if chunk.size < self.n:
            chunk = np.concatenate([chunk, np.zeros(self.n - chunk.size, np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = OUT_RATE, self._pts, fractions.Fraction(1, OUT_RATE)
        return frame


def set_audio_jitter_prefetch(receiver, prefetch: int) -> bool:
    """Shorten aiortc's hard-coded audio jitter buffer prefetch (4 x 20 ms = 80 ms of added latency).

    aiortc exposes no setting for it, so this replaces the receiver's private buffer before any packet arrives;
    returns False (and changes nothing) if aiortc's internals differ from what this expects.
    """
    from aiortc.jitterbuffer import JitterBuffer

    attr = "_RTCRtpReceiver__jitter_buffer"
    old = getattr(receiver, attr, None)
    if not isinstance(old, JitterBuffer) or getattr(receiver, "_RTCRtpReceiver__kind", "audio") != "audio":
        return False
    setattr(receiver, attr, JitterBuffer(capacity=16, prefetch=prefetch))
    return True


class PeerSession:
    """One browser connection bound to one agent session."""

    def __init__(self, server, pc, session):
        self.server, self.pc, self.session = server, pc, session
        self.out = OutboundAudio()
        self.channel = None
        self.tasks: set[asyncio.Task] = set()
        self.audio_frames_in = 0
        self.video_frames_in = 0
        self.latest_video = None
        self._closed = False

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def send_json(self, obj: dict) -> None:
        ch = self.channel
        if ch is not None and ch.readyState == "open":
            ch.send(json.dumps(obj))

    async def consume_audio(self, track) -> None:
        import av
        from aiortc.mediastreams import MediaStreamError

        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.audio_frames_in += 1
            for f in resampler.resample(frame):
                try:
                    await self.session.send_audio(f.to_ndarray().reshape(-1), sample_rate=SAMPLE_RATE)
                except DuplexError as exc:
                    self.send_json({"type": "error", "message": str(exc)})
                    if self.session.closed:
                        return

    async def consume_video(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:  # drain every frame, keep only the latest (vision samples it at its own rate)
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.video_frames_in += 1
            self.latest_video = frame
            if self.server.vision_enabled:
                with contextlib.suppress(DuplexError):
                    self.session.send_image(frame)

    async def forward_events(self) -> None:
        async for ev in self.session.events():
            if isinstance(ev, AudioOut):
                self.out.write(ev.pcm)
            elif isinstance(ev, TextToken):
                self.send_json({"type": "text", "text": ev.text, "time": ev.time})
            elif isinstance(ev, Transcript):
                self.send_json({"type": "transcript", "text": ev.text, "start": ev.start, "end": ev.end})
            elif isinstance(ev, Stats):
                self.send_json({"type": "stats", "step_ms": round(ev.step_ms, 2), "latency_ms": round(ev.latency_ms),
                                "dropped_input_frames": ev.dropped_input_frames, "sessions": ev.sessions,
                                "audio_frames_in": self.audio_frames_in, "video_frames_in": self.video_frames_in})
            elif isinstance(ev, Error):
                self.send_json({"type": "error", "message": f"{ev.kind}: {ev.message}"})
            elif isinstance(ev, Closed):
                return

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.session.close("peer closed")
        for t in list(self.tasks):
            t.cancel()
        self.out.stop()
        await self.pc.close()
        self.server.peers.discard(self)


async def handle_offer(request: web.Request) -> web.StreamResponse:
    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

    server = request.app[SERVER]
    if server.token and request.query.get("token") != server.token and \
            request.headers.get("Authorization") != f"Bearer {server.token}":
        return web.json_response({"error": "missing or wrong token"}, status=401)
    try:
        params = await request.json()
        offer = RTCSessionDescription(sdp=str(params["sdp"]), type=str(params["type"]))
        if offer.type != "offer" or "m=" not in offer.sdp:
            raise ValueError("expected an SDP offer")
    except (ValueError, KeyError, TypeError) as exc:
        return web.json_response({"error": f"bad offer: {exc}"}, status=400)
    try:
        session = server.agent.session(seed=params.get("seed"))
        await session.open()
    except SessionLimitError as exc:
        return web.json_response({"error": f"server full: {exc}"}, status=503)
    ice = [RTCIceServer(urls=u) for u in server.ice_servers]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
    peer = PeerSession(server, pc, session)
    server.peers.add(peer)

    @pc.on("datachannel")
    def on_datachannel(channel):
        peer.channel = channel

    @pc.on("track")
    def on_track(track):
        if track.kind == "audio":
            peer.spawn(peer.consume_audio(track))
        elif track.kind == "video":
            peer.spawn(peer.consume_video(track))

    @pc.on("connectionstatechange")
    async def on_state():
        if pc.connectionState in ("failed", "closed"):
            await peer.close()

    try:
        await pc.setRemoteDescription(offer)
        for t in pc.getTransceivers():
            if t.kind == "audio":
                if server.jitter_prefetch is not None and not set_audio_jitter_prefetch(t.receiver,
                                                                                       server.jitter_prefetch):
                    log.warning("could not shorten aiortc's audio jitter buffer (internals changed?)")
                t.sender.replaceTrack(peer.out)
                t.direction = "sendrecv"
        if not any(t.kind == "audio" for t in pc.getTransceivers()):
            pc.addTrack(peer.out)
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # noqa: BLE001 - malformed SDP must not take the server down
        await peer.close()
        return web.json_response({"error": f"bad offer: {exc}"}, status=400)
    peer.spawn(peer.forward_events())
    return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
