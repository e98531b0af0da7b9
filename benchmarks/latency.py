"""`duplex bench latency`: mouth-to-ear latency added by our stack over loopback WebSocket and WebRTC.

WebSocket (exact, per frame): the client streams Ogg/Opus in 20 ms pages paced in real time; output frame f
is the model's answer to input frame f. Added latency(f) = arrival at the client of output frame f's first
sample - the moment the client sent the last sample of input frame f. Everything in between is ours: Opus
encode/decode, WebSocket, buffering, the batched step, the frame clock.

WebRTC (composite): RTP loopback one way (an aiortc pair, a click detected by onset, measured here) x 2 +
the server's own time from a complete input frame to its output frame queued on the outbound track + the
track's queue delay. The model's algorithmic budget (80 ms frame + its acoustic delay) comes on top of both.
"""

from __future__ import annotations

import asyncio
import fractions
import statistics
import time

import numpy as np

from benchmarks.timing import device_name
from models.codec import FRAME_SIZE as FRAME
from models.codec import SAMPLE_RATE as RATE
from streaming.stats import percentile

GOAL_MS = 200.0


async def _start_server(model: str, device: str):
    from aiohttp.test_utils import TestServer

    from agent import Agent, AgentConfig
    from frontends.server import build_app

    agent = Agent.from_pretrained(model, AgentConfig(max_sessions=4, device=device))
    server = TestServer(build_app(agent), host="127.0.0.1")
    await server.start_server()
    return agent, server


async def websocket_latency(server, agent, seconds: float) -> list[float]:
    import aiohttp
    import sphn

    first_valid = agent.bundle.lm.cfg.max_delay
    t = np.arange(int(seconds * RATE)) / RATE
    pcm = (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    sent_end: dict[int, float] = {}  # client: input frame k fully sent
    stepped: dict[int, int] = {}  # server: output frame j was computed from input frame k
    recv_start: dict[int, float] = {}  # client: first sample of output frame j arrived
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.make_url("/api/chat"))
        assert (await ws.receive_bytes(timeout=10))[0] == 0
        (session,) = [s for s in agent._sessions if not s.closed]
        slot = session._slot
        sink = slot.sink

        def record(out):  # in-process probe on the server side of the same connection
            if out.input_index is not None:
                stepped[out.frame] = out.input_index
            sink(out)

        slot.sink = record
        writer, reader = sphn.OpusStreamWriter(RATE), sphn.OpusStreamReader(RATE)

        async def send():
            t0 = time.monotonic()
            for i in range(0, pcm.size, 480):
                page = writer.append_pcm(pcm[i:i + 480])
                if page:
                    await ws.send_bytes(b"\x01" + page)
                end = i + 480
                if end % FRAME == 0:
                    sent_end[end // FRAME - 1] = time.monotonic()
                delay = t0 + end / RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

        sender = asyncio.create_task(send())
        received = 0
        deadline = time.monotonic() + seconds + 5
        while time.monotonic() < deadline:
            try:
                msg = await ws.receive(timeout=3)
            except TimeoutError:
                break
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            if msg.data[0] != 1:
                continue
            now = time.monotonic()
            out = reader.append_bytes(msg.data[1:])
            n = 0 if out is None else out.size
            for s in range((received + FRAME - 1) // FRAME * FRAME, received + n, FRAME):
                recv_start[first_valid + s // FRAME] = now
            received += n
        sender.cancel()
        await ws.close()
    return [(recv_start[j] - sent_end[k]) * 1e3 for j, k in sorted(stepped.items())
            if j in recv_start and k in sent_end][3:]  # the first frames include connection warm-up


async def rtp_one_way_ms(trials: int = 10, prefetch: int | None = 1) -> float:
    """One-way latency of an aiortc loopback (Opus at 48 kHz): a click's onset, sent vs received."""
    from aiortc import MediaStreamTrack, RTCPeerConnection
    from av import AudioFrame

    click_times: list[float] = []

    class Clicks(MediaStreamTrack):
        kind = "audio"

        def __init__(self):
            super().__init__()
            self.pts = 0
            self.t0 = None

        async def recv(self):
            if self.t0 is None:
                self.t0 = time.monotonic()
            self.pts += 960
            delay = self.t0 + self.pts / 48000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            loud = (self.pts // 960) % 25 == 0  # a 20 ms burst every 500 ms
            s = np.full(960, 12000 if loud else 0, np.int16)
            if loud:
                s[::2] *= -1
                click_times.append(time.monotonic())
            f = AudioFrame.from_ndarray(s[None, :], format="s16", layout="mono")
            f.sample_rate, f.pts, f.time_base = 48000, self.pts, fractions.Fraction(1, 48000)
            return f

    a, b = RTCPeerConnection(), RTCPeerConnection()
    a.addTrack(Clicks())
    arrivals: list[float] = []
    done = asyncio.Event()

    @b.on("track")
    def on_track(track):
        async def pull():
            was_loud = False
            while not done.is_set():
                try:
                    frame = await track.recv()
                except Exception:  # noqa: BLE001
                    return
                loud = np.abs(frame.to_ndarray()).max() > 3000
                if loud and not was_loud:
                    arrivals.append(time.monotonic())
                    if len(arrivals) >= trials:
                        done.set()
                was_loud = loud
        asyncio.ensure_future(pull())

    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    if prefetch is not None:  # the receive side as `duplex serve` configures it
        from frontends.transports.webrtc import set_audio_jitter_prefetch

        for t in b.getTransceivers():
            set_audio_jitter_prefetch(t.receiver, prefetch)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    try:
        async with asyncio.timeout(30):
            await done.wait()
    except TimeoutError:
        pass
    await a.close()
    await b.close()
    pairs = []
    for t_arr in arrivals:
        before = [c for c in click_times if c <= t_arr]
        if before:
            pairs.append((t_arr - before[-1]) * 1e3)
    return statistics.median(pairs) if pairs else float("nan")


async def _run(args) -> None:
    agent, server = await _start_server(args.model, args.device)
    try:
        cfg = agent.bundle.lm.cfg
        budget = 80 * (1 + cfg.max_delay)
        print(f"device: {device_name()}  model: {agent.bundle.name}  model budget (frame + acoustic delay): "
              f"{budget} ms  goal: < {GOAL_MS:.0f} ms added by our stack")
        ws = await websocket_latency(server, agent, args.seconds)
        med, p99 = statistics.median(ws), percentile(ws, 0.99)
        print(f"WebSocket (Moshi protocol, Ogg/Opus), {len(ws)} frames: added median {med:6.1f} ms  "
              f"p90 {percentile(ws, 0.9):6.1f} ms  p99 {p99:6.1f} ms  -> mouth-to-ear ~{med + budget:.0f} ms  "
              f"(goal met: {med < GOAL_MS})")
        rtp_default = await rtp_one_way_ms(prefetch=None)
        rtp = await rtp_one_way_ms(prefetch=1)
        print(f"RTP loopback one-way: aiortc default jitter buffer {rtp_default:5.1f} ms, "
              f"with `duplex serve`'s prefetch=1 {rtp:5.1f} ms")
        step = agent.engine.step_p99()
        server_ms = statistics.median(agent.engine.step_ms)  # the batched steps of the WebSocket run above
        queue_ms = 20.0  # the outbound track releases 20 ms packets; a frame waits at most one packet
        tick_ms = 40.0  # mean wait of a complete input frame for the next 80 ms clock tick
        total = 2 * rtp + tick_ms + server_ms + queue_ms
        print(f"WebRTC (aiortc loopback, Opus 48 kHz): RTP one-way {rtp:5.1f} ms x 2 + clock tick ~{tick_ms:.0f} ms "
              f"+ step {server_ms:5.1f} ms (p99 {step:5.1f}) + outbound packetisation <= {queue_ms:.0f} ms "
              f"= added ~{total:5.1f} ms  "
              f"-> mouth-to-ear ~{total + budget:.0f} ms (goal met: {total < GOAL_MS})")
    finally:
        await server.close()


def run_latency_bench(args) -> int:
    asyncio.run(_run(args))
    return 0
