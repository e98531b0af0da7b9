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
from collections.abc import AsyncIterator
from typing import Protocol

from aiohttp import WSMsgType, web

from agent.errors import DuplexError, SessionLimitError
from agent.events import AudioOut, Closed, Error, TextToken
from frontends.transports.keys import SERVER
from frontends.transports.limits import BadRequest, RateLimiter, TooManyConnections, Watchdog, seed_from_query
from frontends.transports.ogg_opus import OggOpusReader
from models.codec import SAMPLE_RATE

log = logging.getLogger("duplex.ws")

HANDSHAKE, AUDIO, TEXT, CONTROL, METADATA, ERROR, PING, COLORED, IMAGE = range(9)
MAX_AUDIO_MESSAGE = 64 * 1024  # ~12 s of Opus: a client flushing what it held back, never more


class MessageSocket(Protocol):
    """What a Moshi conversation needs of a WebSocket, whichever server holds it (aiohttp for `duplex serve`,
    Starlette inside a Ray Serve replica for `duplex serve --ray`)."""

    peer: str

    @property
    def closed(self) -> bool: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    def messages(self) -> AsyncIterator[bytes | str]:
        """Binary messages as bytes, text ones as str; ends when the client closes; a protocol violation
        raises `ProtocolViolation`."""
        ...


class ProtocolViolation(Exception):
    """The client broke the WebSocket protocol: logged, then the conversation ends."""


async def handle_chat(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    try:
        seed = seed_from_query(request.query)
    except BadRequest as exc:
        return web.json_response({"error": str(exc)}, status=400)
    ip = request.remote or "?"
    try:
        server.connections.acquire(ip)
    except TooManyConnections as exc:
        return web.json_response({"error": str(exc)}, status=429)
    try:
        ws = web.WebSocketResponse(max_msg_size=server.limits.max_message_bytes, heartbeat=30)
        try:
            await ws.prepare(request)
        except ConnectionError:
            log.info("%s left during the WebSocket upgrade", ip)
            return ws
        await converse(_AiohttpSocket(ws, ip), server, seed)
        return ws
    finally:
        server.connections.release(ip)


class _AiohttpSocket:
    def __init__(self, ws: web.WebSocketResponse, peer: str):
        self.ws, self.peer = ws, peer

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code=code, message=reason.encode()[:120])

    async def messages(self) -> AsyncIterator[bytes | str]:
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                yield msg.data
            elif msg.type == WSMsgType.TEXT:
                yield msg.data
            elif msg.type == WSMsgType.ERROR:
                raise ProtocolViolation(str(self.ws.exception()))


async def _send(ws: MessageSocket, kind: int, payload: bytes = b"") -> None:
    """Send unless the socket is gone (a vanished client is noticed by the receive loop)."""
    if not ws.closed:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(bytes([kind]) + payload)


async def converse(ws: MessageSocket, server, seed: int | None) -> None:
    """One conversation over an open WebSocket; `server` holds the agent, the limits and the open sockets."""
    limits = server.limits
    session = server.agent.session(seed=seed)
    server.websockets.add(ws)
    sender: asyncio.Task | None = None

    async def expire(reason: str) -> None:
        log.info("closing %s's session: %s", ws.peer, reason)
        await _send(ws, ERROR, f"closing: {reason}".encode())
        await ws.close(1000, reason)

    watchdog = Watchdog(limits.handshake_timeout_s, limits.idle_timeout_s, expire)
    try:
        try:
            await session.open()
        except SessionLimitError as exc:
            await _send(ws, ERROR, f"server full: {exc}".encode())
            await ws.close(1013, "server full, try again later")
            return
        await _send(ws, HANDSHAKE, b"\x00\x00")
        sender = asyncio.create_task(_send_loop(ws, session))
        watchdog.start()
        inbound = _Inbound(ws, session, watchdog, RateLimiter(limits.max_messages_per_s))
        async for data in ws.messages():
            if isinstance(data, bytes):
                await inbound.on_message(data)
            else:
                await _send(ws, ERROR, b"binary messages expected (first byte = kind)")
    except ProtocolViolation as exc:
        log.info("%s broke the WebSocket protocol: %s", ws.peer, exc)
    except ConnectionError:
        log.info("%s reset the connection", ws.peer)
    finally:  # also when cancelled (the server cancels the handler of a connection that is lost)
        watchdog.stop()
        server.websockets.discard(ws)
        if sender is not None:
            sender.cancel()
        await session.close("client disconnected")  # shielded: completes even under cancellation
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()


class _Inbound:
    """One connection's incoming messages: audio through the damage-tolerant reader, rate-limited."""

    def __init__(self, ws: MessageSocket, session, watchdog: Watchdog, rate: RateLimiter):
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


async def _send_loop(ws: MessageSocket, session) -> None:
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
