"""Seeded fuzzing of the Moshi-protocol WebSocket and the WebRTC offer endpoint (a few hundred cases, < 1 min).

After every case the server is alive and holds no session once the client is gone (the handshake deadline is
short here); at the end a fresh, well-behaved client is still answered.
"""

import asyncio
import json
import logging
import random

import pytest

aiohttp = pytest.importorskip("aiohttp")
sphn = pytest.importorskip("sphn")
pytest.importorskip("aiortc")

from tests.hostile import answers, raw_websocket, sessions_settle, start_server, ws_frame  # noqa: E402

CASES = 300


def _junk(rng: random.Random, n: int | None = None) -> bytes:
    return rng.randbytes(rng.randint(0, 300) if n is None else n)


def _json_value(rng: random.Random, depth: int = 0):
    makers = [lambda: None, lambda: True, lambda: rng.randint(-2**70, 2**70), lambda: rng.random() * 1e30,
              lambda: "x" * rng.randint(0, 5000),
              lambda: rng.choice(["offer", "answer", "v=0\r\nm=audio 9 RTP/AVP 0\r\n"])]
    if depth < 2:
        makers += [lambda: [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))],
                   lambda: {rng.choice(["sdp", "type", "seed", "z"]): _json_value(rng, depth + 1)
                            for _ in range(rng.randint(0, 4))}] * 2
    return rng.choice(makers)()


def _mutated_offer(rng: random.Random, sdp: str) -> dict:
    lines = sdp.split("\r\n")
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        op = rng.randrange(4)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 2:
            lines[i] = lines[i][: rng.randint(0, len(lines[i]))] + rng.choice(["", "\x00", " 99999999999", "é"])
        else:
            lines[i] = "m=" + rng.choice(["audio", "video", "application"]) + " 9 UDP/DTLS/SCTP webrtc-datachannel"
    body = {"sdp": "\r\n".join(lines), "type": "offer"}
    if rng.random() < 0.5:
        body["seed"] = rng.choice([0, 2**63 - 1, 2**63, -1, "3", 1.0, None, [1]])
    return body


def _raw_frames(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randint(1, 4)):
        opcode = rng.choice([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB, 0xF])
        payload = _junk(rng, rng.choice([0, 2, 5, 125, 126, 200]))
        length = rng.choice([None, None, None, 2**63 - 1, 70000, 3])
        frame = ws_frame(opcode, payload, fin=rng.random() < 0.8, length=length, mask=rng.random() < 0.9)
        out += frame[: rng.randint(2, len(frame))] if rng.random() < 0.2 else frame
    return out


def _messages(rng: random.Random, pages: list[bytes]) -> list[bytes]:
    msgs = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.choice([0x00, 0x01, 0x01, 0x01, 0x02, 0x03, 0x05, 0x06, 0x08, 0x7F])
        if kind == 0x01:
            i = rng.randrange(len(pages))
            body = rng.choice([pages[i], b"".join(pages[i:i + 8]), pages[i][: rng.randint(0, len(pages[i]))],
                               b"OggS" + _junk(rng), _junk(rng)])
        elif kind == 0x08:
            body = rng.choice([_junk(rng), b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + _junk(rng, 8),
                               b"\xff\xd8\xff\xc0\x00\x11\x08" + _junk(rng, 10)])
        else:
            body = _junk(rng)
        msgs.append(bytes([kind]) + body)
    return msgs


def test_fuzzed_clients_never_leak_a_slot_or_take_the_server_down(caplog):
    import numpy as np

    from tests.conftest import chatty_bundle

    rng = random.Random(20261201)
    writer = sphn.OpusStreamWriter(24000)
    tone = (0.3 * np.sin(np.arange(24000) / 24000 * 2 * np.pi * 330)).astype(np.float32)
    pages = [p for i in range(0, tone.size, 480) if (p := writer.append_pcm(tone[i:i + 480]))]

    async def real_offer() -> str:
        from aiortc import RTCPeerConnection

        pc = RTCPeerConnection()
        pc.addTransceiver("audio")
        pc.addTransceiver("video")
        pc.createDataChannel("chat")
        await pc.setLocalDescription(await pc.createOffer())
        await pc.close()
        return pc.localDescription.sdp

    async def main():
        sdp = await real_offer()
        server = await start_server(chatty_bundle(), max_sessions=2, handshake_timeout_s=0.5, idle_timeout_s=1.0,
                                    max_messages_per_s=100)
        kinds = {"raw": 0, "messages": 0, "offer": 0}
        statuses: dict[int, int] = {}
        try:
            async with aiohttp.ClientSession() as http:
                for case in range(CASES):
                    kind = rng.choice(list(kinds))
                    kinds[kind] += 1
                    if kind == "raw":
                        await raw_websocket(server.port, after_upgrade=_raw_frames(rng), read_101=rng.random() < 0.8,
                                            rst=rng.random() < 0.5, linger_s=0.01)
                    elif kind == "messages":
                        query = {"audio_seed": rng.choice(["1", "x", "-1", str(2**64), "007"])} \
                            if rng.random() < 0.2 else {}
                        try:
                            ws = await http.ws_connect(server.make_url("/api/chat").with_query(query))
                        except aiohttp.WSServerHandshakeError as exc:
                            assert exc.status in (400, 429), exc.status
                        else:
                            for m in _messages(rng, pages):
                                await ws.send_bytes(m)
                            if rng.random() < 0.5:
                                ws._response.connection.transport.abort()
                            else:
                                await ws.close()
                    else:
                        r = rng.random()
                        body = _mutated_offer(rng, sdp) if r < 0.5 else _json_value(rng) if r < 0.85 else _junk(rng)
                        data = body if isinstance(body, bytes) else json.dumps(body)
                        resp = await http.post(server.make_url("/offer"), data=data)
                        assert resp.status in (200, 400, 413, 429, 503), resp.status
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1
                        assert "error" in await resp.json() or resp.status == 200
                    alive = await http.get(server.make_url("/healthz"))
                    assert alive.status == 200, case
                    assert await sessions_settle(http, server, timeout=3) == 0, (case, kind)
                audio, text = await answers(http, server)
                assert audio > 0 and text > 0
        finally:
            await server.close()
        return kinds, statuses

    with caplog.at_level(logging.INFO):
        kinds, statuses = asyncio.run(main())
    assert min(kinds.values()) > CASES // 5
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0, statuses  # accepted offers expire too
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info][:3]
