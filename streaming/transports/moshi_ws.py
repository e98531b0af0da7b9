"""A Moshi-protocol WebSocket endpoint (`/api/chat`), so kyutai's own clients work against this server.

Binary messages, first byte = kind: 0x00 handshake (sent once the session has a slot), 0x01 Ogg/Opus audio
at 24 kHz both ways, 0x02 text pieces, 0x03 control, 0x05 error (UTF-8), 0x06 ping, 0x08 image (encoded
PNG/JPEG bytes; models with vision). A bad message gets a 0x05 reply; the connection and everyone else go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import WSMsgType, web

from agent.errors import DuplexError, SessionLimitError
from agent.events import AudioOut, Closed, Error, TextToken
from models.codec import SAMPLE_RATE
from streaming.transports.keys import SERVER

log = logging.getLogger("duplex.ws")

HANDSHAKE, AUDIO, TEXT, CONTROL, METADATA, ERROR, PING, COLORED, IMAGE = range(9)
MAX_MESSAGE = 4 * 1024 * 1024


async def handle_chat(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    if server.token and request.query.get("worker_auth_id") != server.token:
        return web.json_response({"error": "missing or wrong worker_auth_id token"}, status=401)
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=30)
    await ws.prepare(request)
    seed = _int_param(request, "audio_seed", _int_param(request, "text_seed", None))
    try:
        session = server.agent.session(seed=seed)
        await session.open()
    except SessionLimitError as exc:
        await ws.send_bytes(bytes([ERROR]) + f"server full: {exc}".encode())
        await ws.close(code=1013, message=b"server full, try again later")
        return ws
    import sphn

    reader, writer = sphn.OpusStreamReader(SAMPLE_RATE), sphn.OpusStreamWriter(SAMPLE_RATE)
    await ws.send_bytes(bytes([HANDSHAKE, 0, 0]))
    sender = asyncio.create_task(_send_loop(ws, session, writer))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await _on_message(ws, session, reader, msg.data)
            elif msg.type == WSMsgType.TEXT:
                await ws.send_bytes(bytes([ERROR]) + b"binary messages expected (first byte = kind)")
            elif msg.type == WSMsgType.ERROR:
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        await session.close("client disconnected")
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
    return ws


def _int_param(request: web.Request, name: str, default):
    try:
        return int(request.query[name])
    except (KeyError, ValueError):
        return default


async def _on_message(ws: web.WebSocketResponse, session, reader, data: bytes) -> None:
    if not data:
        await ws.send_bytes(bytes([ERROR]) + b"empty message")
        return
    kind, payload = data[0], data[1:]
    try:
        if kind == AUDIO:
            try:
                pcm = reader.append_bytes(payload)
            except Exception as exc:  # noqa: BLE001 - sphn raises plain exceptions on bad Ogg
                await ws.send_bytes(bytes([ERROR]) + f"bad Ogg/Opus audio: {exc}".encode())
                return
            if pcm is not None and pcm.size:
                await session.send_audio(pcm, sample_rate=SAMPLE_RATE)
        elif kind == PING:
            await ws.send_bytes(bytes([PING]))
        elif kind == CONTROL:
            pass  # start/endTurn/pause/restart: full duplex needs no turn signals; accepted for compatibility
        elif kind == IMAGE:
            session.send_image(payload)
        else:
            await ws.send_bytes(bytes([ERROR]) + f"unsupported message kind {kind:#04x}".encode())
    except DuplexError as exc:
        await ws.send_bytes(bytes([ERROR]) + str(exc).encode())


async def _send_loop(ws: web.WebSocketResponse, session, writer) -> None:
    async for ev in session.events():
        if ws.closed:
            return
        if isinstance(ev, AudioOut):
            page = writer.append_pcm(ev.pcm)
            if page:
                await ws.send_bytes(bytes([AUDIO]) + page)
        elif isinstance(ev, TextToken):
            await ws.send_bytes(bytes([TEXT]) + ev.text.encode())
        elif isinstance(ev, Error):
            await ws.send_bytes(bytes([ERROR]) + f"{ev.kind}: {ev.message}".encode())
        elif isinstance(ev, Closed):
            return
