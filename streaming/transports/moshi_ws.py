"""A Moshi-protocol WebSocket endpoint (`/api/chat`), so kyutai's own clients work against this server.

Binary messages, first byte = kind: 0x00 handshake (sent once the session has a slot), 0x01 Ogg/Opus audio
at 24 kHz both ways, 0x02 text pieces, 0x03 control, 0x05 error (UTF-8), 0x06 ping, 0x08 image (encoded
PNG/JPEG bytes; models with vision). A bad message gets a 0x05 reply; the connection and everyone else go on.

The session slot is owned by `_converse` alone, whose `finally` gives it back on every exit: a client that
vanishes mid-upgrade, breaks the WebSocket protocol, never sends audio (`handshake_timeout_s`), goes quiet
(`idle_timeout_s`), or is still connected at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import WSMsgType, web

from agent.errors import DuplexError, SessionLimitError
from agent.events import AudioOut, Closed, Error, TextToken
from models.codec import SAMPLE_RATE
from streaming.transports.keys import SERVER
from streaming.transports.limits import BadRequest, RateLimiter, TooManyConnections, Watchdog, seed_from_query
from streaming.transports.ogg_opus import OggOpusReader

log = logging.getLogger("duplex.ws")

HANDSHAKE, AUDIO, TEXT, CONTROL, METADATA, ERROR, PING, COLORED, IMAGE = range(9)
MAX_AUDIO_MESSAGE = 64 * 1024  # ~12 s of Opus: a client flushing what it held back, never more


async def handle_chat(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    try:
        seed = seed_from_query(request)
    except BadRequest as exc:
        return web.json_response({"error": str(exc)}, status=400)
    ip = request.remote or "?"
    try:
        server.connections.acquire(ip)
    except TooManyConnections as exc:
        return web.json_response({"error": str(exc)}, status=429)
    try:
        return await _converse(request, server, seed)
    finally:
        server.connections.release(ip)


async def _send(ws: web.WebSocketResponse, kind: int, payload: bytes = b"") -> None:
    """Send unless the socket is gone (a vanished client is noticed by the receive loop)."""
    if not ws.closed:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(bytes([kind]) + payload)


async def _converse(request: web.Request, server, seed: int | None) -> web.StreamResponse:
    limits = server.limits
    ws = web.WebSocketResponse(max_msg_size=limits.max_message_bytes, heartbeat=30)
    try:
        await ws.prepare(request)
    except ConnectionError:
        log.info("%s left during the WebSocket upgrade", request.remote)
        return ws
    session = server.agent.session(seed=seed)
    server.websockets.add(ws)
    sender: asyncio.Task | None = None

    async def expire(reason: str) -> None:
        log.info("closing %s's session: %s", request.remote, reason)
        await _send(ws, ERROR, f"closing: {reason}".encode())
        await ws.close(code=1000, message=reason.encode()[:120])

    watchdog = Watchdog(limits.handshake_timeout_s, limits.idle_timeout_s, expire)
    try:
        try:
            await session.open()
        except SessionLimitError as exc:
            await _send(ws, ERROR, f"server full: {exc}".encode())
            await ws.close(code=1013, message=b"server full, try again later")
            return ws
        await _send(ws, HANDSHAKE, b"\x00\x00")
        sender = asyncio.create_task(_send_loop(ws, session))
        watchdog.start()
        inbound = _Inbound(ws, session, watchdog, RateLimiter(limits.max_messages_per_s))
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await inbound.on_message(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await _send(ws, ERROR, b"binary messages expected (first byte = kind)")
            elif msg.type == WSMsgType.ERROR:
                log.info("%s broke the WebSocket protocol: %s", request.remote, ws.exception())
                break
    except ConnectionError:
        log.info("%s reset the connection", request.remote)
    finally:  # also when cancelled (aiohttp cancels the handler of a connection that is lost)
        watchdog.stop()
        server.websockets.discard(ws)
        if sender is not None:
            sender.cancel()
        await session.close("client disconnected")  # shielded: completes even under cancellation
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
    return ws


class _Inbound:
    """One connection's incoming messages: audio through the damage-tolerant reader, rate-limited."""

    def __init__(self, ws: web.WebSocketResponse, session, watchdog: Watchdog, rate: RateLimiter):
        self.ws, self.session, self.watchdog, self.rate = ws, session, watchdog, rate
        self.reader = OggOpusReader(SAMPLE_RATE)
        self.damage_reported = False
        self.dropped = 0
        self._last_drop_report = -1e9

    async def on_message(self, data: bytes) -> None:
        if not self.rate.allow():
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_report > 5:
                self._last_drop_report = now
                await _send(self.ws, ERROR, f"too many messages: {self.dropped} dropped; slow down".encode())
            return
        if not data:
            await _send(self.ws, ERROR, b"empty message")
            return
        kind, payload = data[0], data[1:]
        try:
            if kind == AUDIO:
                await self._on_audio(payload)
            elif kind == PING:
                await _send(self.ws, PING)
            elif kind == CONTROL:
                pass  # start/endTurn/pause/restart: full duplex needs no turn signals; accepted for compatibility
            elif kind == IMAGE:
                self.session.send_image(payload)
            else:
                await _send(self.ws, ERROR, f"unsupported message kind {kind:#04x}".encode())
        except DuplexError as exc:
            await _send(self.ws, ERROR, str(exc).encode())

    async def _on_audio(self, payload: bytes) -> None:
        if len(payload) > MAX_AUDIO_MESSAGE:
            await _send(self.ws, ERROR, f"audio message of {len(payload)} bytes dropped: send Ogg pages as they "
                                        f"are made (at most {MAX_AUDIO_MESSAGE} bytes)".encode())
            return
        before = self.reader.damaged
        pcm = self.reader.feed(payload)
        if self.reader.damaged != before:
            self.session.note_input_damage(self.reader.damaged)
            if not self.damage_reported:  # once: a flaky link must not turn into a flood of errors
                self.damage_reported = True
                await _send(self.ws, ERROR, b"bad Ogg/Opus audio skipped up to the next good page; the "
                                            b"conversation goes on (later damage is counted in the stats)")
        if pcm.size:
            self.watchdog.alive()
            await self.session.send_audio(pcm, sample_rate=SAMPLE_RATE)


async def _send_loop(ws: web.WebSocketResponse, session) -> None:
    import sphn

    writer = sphn.OpusStreamWriter(SAMPLE_RATE)
    async for ev in session.events():
        if ws.closed:
            return
        if isinstance(ev, AudioOut):
            page = writer.append_pcm(ev.pcm)
            if page:
                await _send(ws, AUDIO, page)
        elif isinstance(ev, TextToken):
            await _send(ws, TEXT, ev.text.encode())
        elif isinstance(ev, Error):
            await _send(ws, ERROR, f"{ev.kind}: {ev.message}".encode())
        elif isinstance(ev, Closed):
            return
