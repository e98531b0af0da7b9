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
from agent.events import AudioOut, Closed, Error, ImageUpdated, Stats, TextToken, Transcript
from frontends.transports.keys import SERVER
from frontends.transports.limits import BadRequest, TooManyConnections, Watchdog, parse_seed
from models.codec import SAMPLE_RATE

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
    """One browser connection bound to one agent session; `close()` gives everything back, once."""

    def __init__(self, server, pc, session, ip: str):
        self.server, self.pc, self.session, self.ip = server, pc, session, ip
        self.out = OutboundAudio()
        self.channel = None
        self.tasks: set[asyncio.Task] = set()
        self.audio_frames_in = 0
        self.video_frames_in = 0
        self._closed = False
        limits = server.limits
        self.watchdog = Watchdog(limits.handshake_timeout_s, limits.idle_timeout_s, self._expire)

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def send_json(self, obj: dict) -> None:
        ch = self.channel
        if ch is not None and ch.readyState == "open":
            ch.send(json.dumps(obj))

    async def _expire(self, reason: str) -> None:
        log.info("closing %s's WebRTC session: %s", self.ip, reason)
        self.send_json({"type": "error", "message": f"closing: {reason}"})
        await self.close()

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
            self.watchdog.alive()
            for f in resampler.resample(frame):
                try:
                    await self.session.send_audio(f.to_ndarray().reshape(-1), sample_rate=SAMPLE_RATE)
                except DuplexError as exc:
                    self.send_json({"type": "error", "message": str(exc)})
                    if self.session.closed:
                        return

    async def consume_video(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:  # drain every frame; the session keeps only the latest and samples it at its own rate
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.video_frames_in += 1
            if self.server.vision_enabled:
                try:
                    self.session.send_image(frame)
                except DuplexError as exc:
                    self.send_json({"type": "error", "message": str(exc)})
                    if self.session.closed:
                        return

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
            elif isinstance(ev, ImageUpdated):
                self.send_json({"type": "image", "time": ev.time, "encode_ms": round(ev.encode_ms, 1)})
            elif isinstance(ev, Error):
                self.send_json({"type": "error", "message": f"{ev.kind}: {ev.message}"})
            elif isinstance(ev, Closed):
                return

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.watchdog.stop()
        self.server.peers.discard(self)
        self.server.connections.release(self.ip)
        try:
            await self.session.close("peer closed")
        finally:
            for t in list(self.tasks):
                t.cancel()
            self.out.stop()
            with contextlib.suppress(Exception):
                await self.pc.close()


MAX_SDP = 64 * 1024


def parse_offer(params) -> tuple[str, int | None]:
    """The browser's offer, every field typed and bounded: (sdp, seed). Raises BadRequest."""
    if not isinstance(params, dict):
        raise BadRequest("expected a JSON object {\"sdp\": ..., \"type\": \"offer\"}")
    sdp, kind = params.get("sdp"), params.get("type")
    if kind != "offer":
        raise BadRequest('"type" must be "offer"')
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadRequest('"sdp" must be a non-empty string')
    if len(sdp) > MAX_SDP:
        raise BadRequest(f'"sdp" is longer than {MAX_SDP} characters')
    lines = sdp.replace("\r\n", "\n").split("\n")
    if not any(line.startswith("m=audio ") for line in lines):
        raise BadRequest("the offer has no audio (m=audio) section: the microphone is required")
    return sdp, parse_seed(params.get("seed"))


def _bad(message: str, status: int = 400) -> tuple[int, dict]:
    return status, {"error": message}


async def handle_offer(request: web.Request) -> web.StreamResponse:
    status, body = await answer_offer(request.app[SERVER], await request.read(), request.remote or "?")
    return web.json_response(body, status=status)


async def answer_offer(server, body: bytes, ip: str) -> tuple[int, dict]:
    """An SDP offer -> (HTTP status, JSON body): the answer, or the reason for refusing (400 bad offer, 429 too
    many connections, 503 full). Any HTTP server's handler calls this (aiohttp, Starlette in a Ray replica)."""
    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

    try:
        params = json.loads(body)
        sdp, seed = parse_offer(params)
    except (ValueError, UnicodeDecodeError) as exc:  # BadRequest and JSONDecodeError are ValueErrors
        log.info("bad offer from %s: %s", ip, exc)
        return _bad(f"bad offer: {exc}")
    try:
        server.connections.acquire(ip)
    except TooManyConnections as exc:
        return _bad(str(exc), 429)
    try:
        session = server.agent.session(seed=seed)
        await session.open()
    except BaseException as exc:
        server.connections.release(ip)
        if isinstance(exc, SessionLimitError):
            return _bad(f"server full: {exc}", 503)
        raise
    ice = [RTCIceServer(urls=u) for u in server.ice_servers]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
    peer = PeerSession(server, pc, session, ip)
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
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for t in pc.getTransceivers():
            if t.kind == "audio":
                if server.jitter_prefetch is not None and not set_audio_jitter_prefetch(t.receiver,
                                                                                       server.jitter_prefetch):
                    log.warning("could not shorten aiortc's audio jitter buffer (internals changed?)")
                t.sender.replaceTrack(peer.out)
                t.direction = "sendrecv"
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # noqa: BLE001 - aiortc rejects malformed SDP with many exception types
        await peer.close()
        log.info("bad offer from %s: %s: %s", ip, type(exc).__name__, exc)
        return _bad(f"bad offer: {type(exc).__name__}: {exc}")
    except BaseException:  # cancelled (the client went away mid-request): nothing may stay behind
        await peer.close()
        raise
    peer.watchdog.start()  # ICE + DTLS + first audio within the handshake deadline, then audio keeps coming
    peer.spawn(peer.forward_events())
    return 200, {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
