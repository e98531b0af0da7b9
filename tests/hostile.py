"""Clients that misbehave on purpose, over real loopback sockets: raw WebSocket frames, resets, junk offers."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

import aiohttp
from aiohttp.test_utils import TestServer

from agent import Agent, AgentConfig
from frontends.server import build_app
from frontends.transports.limits import ServerLimits


async def start_server(bundle, max_sessions: int = 4, token: str | None = None, **limits) -> TestServer:
    agent = Agent(bundle, AgentConfig(max_sessions=max_sessions))
    server = TestServer(build_app(agent, token=token, limits=ServerLimits(**limits)), host="127.0.0.1")
    await server.start_server()
    return server


def upgrade_request(port: int, path: str = "/api/chat") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def ws_frame(opcode: int, payload: bytes = b"", fin: bool = True, length: int | None = None,
             mask: bool = True) -> bytes:
    """One client-to-server WebSocket frame; `length` may lie about the payload's size."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        header = bytes([first, bit | n])
    elif n < 65536:
        header = bytes([first, bit | 126]) + struct.pack(">H", n)
    else:
        header = bytes([first, bit | 127]) + struct.pack(">Q", n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER 0): the rudest way to leave."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def raw_websocket(port: int, after_upgrade: bytes = b"", read_101: bool = True, rst: bool = True,
                        linger_s: float = 0.2, path: str = "/api/chat") -> bytes:
    """Upgrade by hand, send `after_upgrade` raw, then leave (RST or FIN). Returns what the server said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        writer.write(upgrade_request(port, path))
        await writer.drain()
        if read_101:
            got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if after_upgrade:
            writer.write(after_upgrade)
            await writer.drain()
            await asyncio.sleep(linger_s)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        if rst:
            reset(writer)
        else:
            writer.close()
    return got


async def sessions_settle(http: aiohttp.ClientSession, server: TestServer, timeout: float = 5.0,
                          token: str | None = None) -> int:
    """Poll /health until no session is held (or the timeout); returns the last count."""
    url = server.make_url("/health")
    if token:
        url = url.with_query(token=token)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        n = (await (await http.get(url)).json())["sessions"]
        if n == 0 or loop.time() > deadline:
            return n
        await asyncio.sleep(0.05)


async def answers(http: aiohttp.ClientSession, server: TestServer, token: str | None = None,
                  seconds: float = 1.5) -> tuple[int, int]:
    """A well-behaved Moshi client: handshake, `seconds` of a tone, then (audio bytes, text pieces) received."""
    import numpy as np
    import sphn

    url = server.make_url("/api/chat")
    if token:
        url = url.with_query(worker_auth_id=token)
    ws = await http.ws_connect(url)
    try:
        first = await ws.receive_bytes(timeout=10)
        assert first[0] == 0x00, first
        writer, reader = sphn.OpusStreamWriter(24000), sphn.OpusStreamReader(24000)
        t = np.arange(int(seconds * 24000)) / 24000
        pcm = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        audio, text = 0, 0
        for i in range(0, pcm.size, 1920):
            page = writer.append_pcm(pcm[i:i + 1920])
            if page:
                await ws.send_bytes(b"\x01" + page)
            await asyncio.sleep(0.06)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while loop.time() < deadline and (audio < 24000 or not text):
            msg = await ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            if msg.data[0] == 0x01:
                out = reader.append_bytes(msg.data[1:])
                audio += 0 if out is None else out.size
            elif msg.data[0] == 0x02:
                text += 1
        return audio, text
    finally:
        await ws.close()
