"""A Moshi-protocol client as a microphone would drive it: audio sent in 20 ms Ogg/Opus pieces paced by the
clock, the model's audio and text received at the same time. Used by `duplex bench cluster` and the tests of
`duplex serve --ray`; it records what a user would get (text, audio, errors, when each audio page came)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

RATE = 24000
CHUNK = 480  # 20 ms
REPLICA_HEADER = "x-duplex-replica"


@dataclass
class Conversation:
    accepted: bool = False
    replica: str | None = None  # which Serve replica held it (the upgrade's x-duplex-replica header)
    text: str = ""
    pcm: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    errors: list[str] = field(default_factory=list)  # the server's 0x05 messages
    close_code: int | None = None
    closed_by_server: bool = False
    sent_s: float = 0.0  # audio sent before the end (seconds)
    page_times: list[float] = field(default_factory=list)  # loop time each audio page arrived
    connected_at: float = 0.0

    def received_s(self) -> float:
        return self.pcm.size / RATE


async def converse(http, url: str, pcm: np.ndarray, tail_s: float = 0.0, connected: asyncio.Event | None = None,
                   handshake_timeout: float = 60.0, out: Conversation | None = None,
                   catch_up_s: float = 0.0) -> Conversation:
    """Stream `pcm` (then `tail_s` of silence) in real time over `url` and collect the replies until the audio
    is sent or the server ends the session. `connected` is set once the session has a slot (or was refused);
    `out`, when given, is filled as the conversation goes (its replica is known from then on). `catch_up_s` > 0:
    after the last piece, wait up to that long for the reply to cover all the audio sent (a server pacing by
    input on a slow machine answers later than real time)."""
    import aiohttp
    import sphn

    out = out if out is not None else Conversation()
    loop = asyncio.get_running_loop()
    ws = await http.ws_connect(url, max_msg_size=0)
    out.replica = ws._response.headers.get(REPLICA_HEADER)
    out.connected_at = loop.time()
    try:
        first = await ws.receive(timeout=handshake_timeout)
        if first.type == aiohttp.WSMsgType.BINARY and first.data[:1] == b"\x00":
            out.accepted = True
        elif first.type == aiohttp.WSMsgType.BINARY and first.data[:1] == b"\x05":
            out.errors.append(first.data[1:].decode(errors="replace"))
    finally:
        if connected is not None:
            connected.set()
    if not out.accepted:
        await ws.receive(timeout=10)  # the close that follows a refusal
        out.close_code, out.closed_by_server = ws.close_code, True
        await ws.close()
        return out
    reader, writer = sphn.OpusStreamReader(RATE), sphn.OpusStreamWriter(RATE)
    pieces, text = [], []

    async def receive() -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                continue
            kind, payload = msg.data[0], msg.data[1:]
            if kind == 0x01:
                got = reader.append_bytes(payload)
                if got is not None and got.size:
                    pieces.append(got)
                    out.page_times.append(loop.time())
            elif kind == 0x02:
                text.append(payload.decode(errors="replace"))
            elif kind == 0x05:
                out.errors.append(payload.decode(errors="replace"))

    rx = asyncio.ensure_future(receive())
    audio = np.concatenate([pcm.astype(np.float32), np.zeros(int(tail_s * RATE), np.float32)])
    start = loop.time()
    for k, i in enumerate(range(0, audio.size, CHUNK)):
        if rx.done():
            break
        page = writer.append_pcm(audio[i:i + CHUNK])
        if page:
            try:
                await ws.send_bytes(b"\x01" + page)
            except (ConnectionError, RuntimeError):
                break
        out.sent_s = (i + CHUNK) / RATE
        await asyncio.sleep(max(0.0, start + (k + 1) * CHUNK / RATE - loop.time()))
    deadline = loop.time() + catch_up_s
    while not rx.done() and loop.time() < deadline and sum(p.size for p in pieces) < audio.size - 2 * 1920:
        await asyncio.sleep(0.05)
    out.closed_by_server = rx.done()
    if not out.closed_by_server:
        await ws.close()
    try:
        await asyncio.wait_for(rx, 10)
    except (TimeoutError, asyncio.CancelledError):
        rx.cancel()
    out.close_code = ws.close_code
    out.text = "".join(text).strip()
    out.pcm = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return out
