"""`duplex serve`: the Moshi-protocol WebSocket and WebRTC end to end, in process, with the embedded model."""

import asyncio
import json

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")
sphn = pytest.importorskip("sphn")
pytest.importorskip("aiortc")

from aiohttp.test_utils import TestServer  # noqa: E402

from agent import Agent, AgentConfig  # noqa: E402
from frontends.server import build_app  # noqa: E402


@pytest.fixture(scope="module")
def bundle():
    from tests.conftest import chatty_bundle

    return chatty_bundle()


def _tone(seconds: float, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def _serve(bundle, **kw):
    agent = Agent(bundle, AgentConfig(max_sessions=kw.pop("max_sessions", 4)))
    server = TestServer(build_app(agent, **kw))
    await server.start_server()
    return server


def test_moshi_websocket_protocol_end_to_end(bundle):
    async def main():
        server = await _serve(bundle, max_sessions=1, token="s3cret")
        url = server.make_url("/api/chat")
        try:
            async with aiohttp.ClientSession() as http:
                resp = await http.get(url)
                assert resp.status == 401  # no token
                assert (await http.get(server.make_url("/health"))).status == 401  # health is behind it too
                assert (await (await http.get(server.make_url("/healthz"))).json()) == {"status": "ok"}  # liveness
                health = await (await http.get(server.make_url("/health").with_query(token="s3cret"))).json()
                assert health["status"] == "ok" and health["max_sessions"] == 1
                assert (health["slots_total"], health["slots_free"], health["keeps_realtime"]) == (1, 1, True)
                ws = await http.ws_connect(url.with_query(worker_auth_id="s3cret", audio_seed="7"))
                first = await ws.receive_bytes(timeout=10)
                assert first[0] == 0x00
                # a second client is refused clearly while the only slot is taken
                ws2 = await http.ws_connect(url.with_query(worker_auth_id="s3cret"))
                refusal = await ws2.receive_bytes(timeout=10)
                assert refusal[0] == 0x05 and b"server full" in refusal
                await ws2.close()
                # malformed messages get 0x05 errors, the connection lives on
                for bad in (b"", b"\x7f", b"\x01not-ogg-at-all"):
                    await ws.send_bytes(bad)
                await ws.send_str("hello")
                writer, reader = sphn.OpusStreamWriter(24000), sphn.OpusStreamReader(24000)
                pcm = _tone(2.0)
                for i in range(0, pcm.size, 480):  # 20 ms chunks, like kyutai's clients
                    page = writer.append_pcm(pcm[i:i + 480])
                    if page:
                        await ws.send_bytes(b"\x01" + page)
                    if i % 4800 == 0:
                        await asyncio.sleep(0.02)
                audio, text, errors = 0, [], []
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while loop.time() < deadline and (audio < 24000 or not text):
                    msg = await ws.receive(timeout=10)
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        break
                    kind, payload = msg.data[0], msg.data[1:]
                    if kind == 0x01:
                        out = reader.append_bytes(payload)
                        audio += 0 if out is None else out.size
                    elif kind == 0x02:
                        text.append(payload.decode())
                    elif kind == 0x05:
                        errors.append(payload.decode())
                await ws.close()
                assert audio >= 24000 and text
                assert len(errors) >= 4 and any("Ogg" in e for e in errors)
                # the slot is freed once the server notices the close (machine-speed independent: poll)
                sessions, deadline = 1, loop.time() + 10
                while sessions and loop.time() < deadline:
                    await asyncio.sleep(0.1)
                    health_url = server.make_url("/health").with_query(token="s3cret")
                    sessions = (await (await http.get(health_url)).json())["sessions"]
                assert sessions == 0
        finally:
            await server.close()

    asyncio.run(main())


def test_webrtc_client_end_to_end(bundle):
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from tests.media import audio_track, collect_audio

    tone = (np.sin(2 * np.pi * 220 * np.arange(24000) / 24000) * 0.25).astype(np.float32)

    async def main():
        server = await _serve(bundle)
        try:
            async with aiohttp.ClientSession() as http:
                bad = await http.post(server.make_url("/offer"), json={"sdp": "garbage", "type": "offer"})
                assert bad.status == 400
                bad = await http.post(server.make_url("/offer"), data=b"{not json")
                assert bad.status == 400
                pc = RTCPeerConnection()
                channel = pc.createDataChannel("chat")
                messages = []
                channel.on("message", lambda m: messages.append(json.loads(m)))
                pc.addTrack(audio_track(tone, loop=True))
                received = []
                collect_audio(pc, received)

                await pc.setLocalDescription(await pc.createOffer())
                resp = await http.post(server.make_url("/offer"), json={"sdp": pc.localDescription.sdp,
                                                                          "type": pc.localDescription.type})
                assert resp.status == 200
                await pc.setRemoteDescription(RTCSessionDescription(**await resp.json()))
                for _ in range(150):
                    await asyncio.sleep(0.1)
                    stats = [m for m in messages if m["type"] == "stats"]
                    if stats and any(m["type"] == "text" for m in messages) and len(received) > 50 \
                            and max(received[-25:]) > 0:
                        break
                assert stats and stats[-1]["audio_frames_in"] > 0  # the server hears the client's audio
                assert any(m["type"] == "text" for m in messages)  # text over the data channel
                assert len(received) > 50 and max(received) > 0  # the model's voice, not only silence
                health = await (await http.get(server.make_url("/health"))).json()
                assert health["sessions"] == 1
                await pc.close()
                for _ in range(50):
                    await asyncio.sleep(0.1)
                    if (await (await http.get(server.make_url("/health"))).json())["sessions"] == 0:
                        break
                assert (await (await http.get(server.make_url("/health"))).json())["sessions"] == 0
        finally:
            await server.close()

    asyncio.run(main())


def test_abrupt_disconnect_does_not_harm_the_server(bundle):
    async def main():
        server = await _serve(bundle, max_sessions=1)
        try:
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(server.make_url("/api/chat"))
                assert (await ws.receive_bytes(timeout=10))[0] == 0
                ws._response.connection.transport.abort()  # vanish without a close frame
            for _ in range(50):  # the slot is freed, so the single-slot server accepts a new client
                await asyncio.sleep(0.1)
                async with aiohttp.ClientSession() as http:
                    health = await (await http.get(server.make_url("/health"))).json()
                if health["sessions"] == 0:
                    break
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(server.make_url("/api/chat"))
                assert (await ws.receive_bytes(timeout=10))[0] == 0
                await ws.close()
        finally:
            await server.close()

    asyncio.run(main())


def test_outbound_track_is_bounded_and_paced():
    from frontends.transports.webrtc import OUT_RATE, OutboundAudio

    async def main():
        track = OutboundAudio(max_s=0.4)
        for _ in range(100):  # 8 s of model audio arriving at once
            track.write(np.ones(1920, np.float32) * 0.5)
        assert track._buf.size <= 0.4 * OUT_RATE and track.dropped_samples > 0
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        frames = [await track.recv() for _ in range(30)]  # 600 ms of packets
        elapsed = loop.time() - t0
        track.stop()
        return frames, elapsed

    frames, elapsed = asyncio.run(main())
    assert 0.5 < elapsed < 1.0  # paced on the wall clock, not bursted
    assert frames[0].samples == 960 and np.abs(frames[-1].to_ndarray()).max() == 0  # silence once drained


def test_two_engines_behind_one_server(bundle):
    """`duplex serve --devices cpu,cpu --max-sessions 1`: /health lists both engines; two Moshi-protocol clients
    are placed, one per engine; a third is refused at once with a clear message."""

    async def main():
        agent = Agent(bundle, AgentConfig(max_sessions=1, devices=["cpu", "cpu"]))
        server = TestServer(build_app(agent))
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                health = await (await http.get(server.make_url("/health"))).json()
                assert len(health["engines"]) == 2 and health["slots_total"] == 2
                url = server.make_url("/api/chat")
                clients = [await http.ws_connect(url) for _ in range(2)]
                for ws in clients:
                    assert (await ws.receive_bytes(timeout=10))[0] == 0x00
                health = await (await http.get(server.make_url("/health"))).json()
                assert [e["slots_free"] for e in health["engines"]] == [0, 0]
                third = await http.ws_connect(url)
                refusal = await third.receive_bytes(timeout=10)
                assert refusal[0] == 0x05 and b"server full" in refusal
                for ws in (*clients, third):
                    await ws.close()
        finally:
            await server.close()

    asyncio.run(main())
