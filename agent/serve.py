"""`duplex serve`: the browser client page, WebRTC signalling, the Moshi-protocol WebSocket and /health."""

from __future__ import annotations

import argparse
import collections
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from agent.api import Agent
from streaming.transports.keys import SERVER

STATIC = Path(__file__).resolve().parent / "static"


@dataclass
class ServerState:
    agent: Agent
    token: str | None = None
    ice_servers: list[str] = field(default_factory=list)
    vision_enabled: bool = False
    jitter_prefetch: int | None = 1  # 20 ms packets aiortc buffers before playing (its default 4 adds 80 ms)
    peers: set = field(default_factory=set)
    client_reports: collections.deque = field(default_factory=lambda: collections.deque(maxlen=32))


def build_app(agent: Agent, token: str | None = None, ice_servers: list[str] | None = None,
              jitter_prefetch: int | None = 1) -> web.Application:
    from streaming.transports.moshi_ws import handle_chat
    from streaming.transports.webrtc import handle_offer

    app = web.Application(client_max_size=1024 * 1024)
    state = ServerState(agent=agent, token=token, ice_servers=list(ice_servers or []),
                        vision_enabled=bool(getattr(agent.bundle, "vision", None)), jitter_prefetch=jitter_prefetch)
    app[SERVER] = state

    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def health(request: web.Request) -> web.StreamResponse:
        eng = agent.engine
        return web.json_response({"status": "ok", "model": agent.bundle.name, "sessions": eng.sessions,
                                  "max_sessions": agent.config.max_sessions, "step_ms_p99": round(eng.step_p99(), 2),
                                  "late_ticks": eng.clock.late_ticks})

    async def client_report(request: web.Request) -> web.StreamResponse:
        try:
            report = await request.json()
        except (json.JSONDecodeError, ValueError):
            return web.json_response({"error": "expected JSON"}, status=400)
        state.client_reports.append(report)
        logging.getLogger("duplex.serve").info("client report: %s", json.dumps(report)[:2000])
        return web.json_response({"ok": True})

    async def on_startup(app: web.Application) -> None:
        await agent.start()

    async def on_shutdown(app: web.Application) -> None:
        for peer in list(state.peers):
            await peer.close()
        await agent.close()

    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_post("/offer", handle_offer)
    app.router.add_get("/api/chat", handle_chat)
    app.router.add_post("/client-report", client_report)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


def add_command(sub: argparse._SubParsersAction) -> None:
    from agent.run_cli import add_model_args

    p = sub.add_parser("serve", help="serve the browser client (WebRTC) and a Moshi-compatible WebSocket",
                       description="Open http://HOST:PORT/ in a browser (mic + camera), or point a Moshi client at "
                                   "ws://HOST:PORT/api/chat.")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8998, help="port (default 8998, Moshi's)")
    p.add_argument("--max-sessions", type=int, default=8, help="concurrent conversations (default 8)")
    p.add_argument("--token", help="require this token (?worker_auth_id= for WebSocket, ?token= for WebRTC)")
    p.add_argument("--ice-server", action="append", default=[],
                   help="STUN/TURN URL for WebRTC (repeatable; none by default: LAN/loopback only)")
    p.add_argument("--jitter-prefetch", type=int, default=1,
                   help="20 ms packets to buffer before playing incoming WebRTC audio (aiortc's own default 4 "
                        "adds 80 ms; raise it on lossy networks; default 1)")
    add_model_args(p)
    p.set_defaults(handler=_serve)


def _serve(args) -> int:
    from agent.config import AgentConfig

    agent = Agent.from_pretrained(args.model, AgentConfig(max_sessions=args.max_sessions, device=args.device))
    app = build_app(agent, token=args.token, ice_servers=args.ice_server, jitter_prefetch=args.jitter_prefetch)
    print(f"model '{agent.bundle.name}' loaded; open http://{args.host}:{args.port}/ "
          f"(WebSocket: ws://{args.host}:{args.port}/api/chat)")
    web.run_app(app, host=args.host, port=args.port, print=None)
    return 0
