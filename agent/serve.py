"""`duplex serve`: the browser client page, WebRTC signalling, the Moshi-protocol WebSocket and /health.

With a token set, every endpoint but the liveness probe `/healthz` needs it (`?token=`, Moshi's
`?worker_auth_id=`, or `Authorization: Bearer`); an address that guesses wrong too often is told to wait (429).
A client's mistake is answered with a JSON reason and logged as one line; tracebacks are for our own bugs.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from agent.api import Agent
from streaming.transports.keys import SERVER
from streaming.transports.limits import AuthGuard, ConnectionCounter, ServerLimits

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_ENV = "DUPLEX_TOKEN"
PUBLIC_PATHS = frozenset({"/healthz"})
log = logging.getLogger("duplex.serve")


@dataclass
class ServerState:
    agent: Agent
    token: str | None = None
    ice_servers: list[str] = field(default_factory=list)
    vision_enabled: bool = False
    jitter_prefetch: int | None = 1  # 20 ms packets aiortc buffers before playing (its default 4 adds 80 ms)
    limits: ServerLimits = field(default_factory=ServerLimits)
    peers: set = field(default_factory=set)
    websockets: set = field(default_factory=set)
    client_reports: collections.deque = field(default_factory=lambda: collections.deque(maxlen=32))
    auth: AuthGuard = field(init=False)
    connections: ConnectionCounter = field(init=False)

    def __post_init__(self) -> None:
        self.auth = AuthGuard(self.token, self.limits.max_failed_auth, self.limits.auth_window_s)
        self.connections = ConnectionCounter(self.limits.max_connections_per_ip)


def credentials(query, headers) -> list[str | None]:
    """Every token a request offers (`?token=`, Moshi's `?worker_auth_id=`, `Authorization: Bearer`)."""
    bearer = headers.get("Authorization", "")
    return [query.get("token"), query.get("worker_auth_id"), bearer[7:] if bearer.startswith("Bearer ") else None]


TOKEN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>duplex: token needed</title>
<style>body{{font:16px system-ui,sans-serif;background:#0f1419;color:#e6edf3;display:grid;place-items:center;
min-height:100vh;margin:0}}form{{background:#182029;border:1px solid #2a3541;border-radius:10px;padding:1.5rem;
max-width:26rem}}#error{{color:#ffb4ae}}input{{font:inherit;padding:.4rem;width:100%;margin:.6rem 0}}
button{{font:inherit;padding:.5rem 1rem;background:#4aa3ff;color:#fff;border:0;border-radius:8px}}</style></head>
<body><form method="get" action="/"><h1>duplex</h1><p id="error" role="alert">{message}</p>
<input name="token" type="password" placeholder="token" aria-label="token" autofocus>
<button>Open</button></form></body></html>"""


def _token_page(wrong: bool) -> web.Response:
    message = ("Wrong token: check it with whoever runs this server." if wrong else
               "This server needs a token: enter the one you were given.")
    return web.Response(text=TOKEN_PAGE.format(message=message), content_type="text/html", status=401)


def _middlewares(state: ServerState):
    @web.middleware
    async def guard(request: web.Request, handler):
        if state.token is not None and request.path not in PUBLIC_PATHS:
            ip = request.remote or "?"
            wait = state.auth.retry_after(ip)
            if wait > 0:
                return web.json_response({"error": f"too many wrong tokens; retry in {wait:.0f} s"}, status=429,
                                         headers={"Retry-After": str(max(1, round(wait)))})
            offered = credentials(request.query, request.headers)
            if not state.auth.check(ip, offered):
                log.info("wrong or missing token from %s for %s", ip, request.path)
                if request.path == "/":  # a person at the page: say what is wrong, in the page's own words
                    return _token_page(wrong=any(offered))
                return web.json_response({"error": "missing or wrong token (?token=, ?worker_auth_id= for Moshi "
                                                   "clients, or Authorization: Bearer)"}, status=401)
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except ConnectionError as exc:  # the client went away mid-request: its business, not a bug of ours
            log.info("%s left during %s %s: %s", request.remote, request.method, request.path, exc)
            return web.Response(status=499)

    return [guard]


def build_app(agent: Agent, token: str | None = None, ice_servers: list[str] | None = None,
              jitter_prefetch: int | None = 1, limits: ServerLimits | None = None) -> web.Application:
    from streaming.transports.moshi_ws import handle_chat
    from streaming.transports.webrtc import handle_offer

    limits = limits or ServerLimits()
    state = ServerState(agent=agent, token=token or None, ice_servers=list(ice_servers or []),
                        vision_enabled=agent.pool.has_vision, jitter_prefetch=jitter_prefetch, limits=limits)
    app = web.Application(client_max_size=limits.max_request_bytes, middlewares=_middlewares(state))
    app[SERVER] = state

    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def liveness(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def health(request: web.Request) -> web.StreamResponse:
        eng = agent.engine
        cap = agent.capacity()
        return web.json_response({"status": "ok", "model": agent.bundle.name, "backend": agent.config.backend,
                                  "sessions": eng.sessions, "max_sessions": agent.config.max_sessions,
                                  **cap.as_dict(), "vision": state.vision_enabled,
                                  "engines": [c.as_dict() for c in agent.engine_capacities()],
                                  "webrtc_peers": len(state.peers), "websockets": len(state.websockets)})

    async def client_report(request: web.Request) -> web.StreamResponse:
        body = await request.content.read(limits.max_report_bytes + 1)
        if len(body) > limits.max_report_bytes:
            return web.json_response({"error": f"report larger than {limits.max_report_bytes} bytes"}, status=413)
        try:
            report = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "expected JSON"}, status=400)
        if not isinstance(report, dict):
            return web.json_response({"error": "expected a JSON object"}, status=400)
        state.client_reports.append(report)
        log.info("client report: %s", json.dumps(report)[:2000])
        return web.json_response({"ok": True})

    async def on_startup(app: web.Application) -> None:
        await agent.start()

    async def on_shutdown(app: web.Application) -> None:
        for peer in list(state.peers):
            await peer.close()
        for ws in list(state.websockets):
            await ws.close(1001, "server shutting down")
        await agent.close()

    app.router.add_get("/", index)
    app.router.add_get("/healthz", liveness)
    app.router.add_get("/health", health)
    app.router.add_post("/offer", handle_offer)
    app.router.add_get("/api/chat", handle_chat)
    app.router.add_post("/client-report", client_report)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


def add_command(sub: argparse._SubParsersAction) -> None:
    from agent.run_cli import add_model_args

    d = ServerLimits()
    p = sub.add_parser("serve", help="serve the browser client (WebRTC) and a Moshi-compatible WebSocket",
                       description="Open http://HOST:PORT/ in a browser (mic + camera), or point a Moshi client at "
                                   "ws://HOST:PORT/api/chat. GET /healthz is a liveness probe; GET /health reports "
                                   "sessions and step times (behind the token when one is set).")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8998, help="port (default 8998, Moshi's)")
    p.add_argument("--max-sessions", type=int, default=8,
                   help="concurrent conversations per engine (default 8)")
    p.add_argument("--devices", metavar="DEV,DEV,...",
                   help="one engine per device, e.g. cuda:0,cuda:1 (cpu counts as one and may repeat); a new "
                        "session goes to the engine with the most free slots (default: --device alone)")
    p.add_argument("--token", help=f"require this token (?worker_auth_id= for WebSocket, ?token= for the page and "
                                   f"WebRTC); visible in `ps`: prefer ${TOKEN_ENV} or --token-file")
    p.add_argument("--token-file", type=Path, help="read the token from this file (first line)")
    p.add_argument("--ice-server", action="append", default=[],
                   help="STUN/TURN URL for WebRTC (repeatable; none by default: LAN/loopback only)")
    p.add_argument("--pace", choices=["realtime", "input"], default="realtime",
                   help="realtime (default): a frame every 80 ms, late input is played as silence; input: a "
                        "step as soon as every session's next frame has arrived - nothing dropped whatever the "
                        "load, so runs are reproducible (evaluation and tests; one stalled client holds up its "
                        "engine)")
    p.add_argument("--jitter-prefetch", type=int, default=1,
                   help="20 ms packets to buffer before playing incoming WebRTC audio (aiortc's own default 4 "
                        "adds 80 ms; raise it on lossy networks; default 1)")
    g = p.add_argument_group("per-client limits")
    g.add_argument("--handshake-timeout", type=float, default=d.handshake_timeout_s, metavar="S",
                   help="a session must stream audio within S seconds of connecting "
                        f"(default {d.handshake_timeout_s:g})")
    g.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, metavar="S",
                   help=f"end a session whose client sends no audio for S seconds (default {d.idle_timeout_s:g})")
    g.add_argument("--max-connections-per-ip", type=int, default=d.max_connections_per_ip, metavar="N",
                   help=f"concurrent sessions from one address (default {d.max_connections_per_ip})")
    g.add_argument("--max-messages-per-s", type=float, default=d.max_messages_per_s, metavar="R",
                   help=f"WebSocket messages per second per connection (default {d.max_messages_per_s:g})")
    g.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes, metavar="B",
                   help=f"largest WebSocket message (default {d.max_message_bytes})")
    g.add_argument("--max-failed-auth", type=int, default=d.max_failed_auth, metavar="N",
                   help=f"wrong tokens per address per minute before it must wait (default {d.max_failed_auth})")
    add_model_args(p)
    from agent.cluster.run import add_arguments

    add_arguments(p)
    p.set_defaults(handler=_serve)


def resolve_token(token: str | None, token_file: Path | None, environ=os.environ) -> str | None:
    """--token, else --token-file, else $DUPLEX_TOKEN; None if none is given."""
    from agent.cli import UserFacingError

    if token is not None and token_file is not None:
        raise UserFacingError("give --token or --token-file, not both")
    if token_file is not None:
        try:
            lines = token_file.read_text().splitlines()
        except OSError as exc:
            raise UserFacingError(f"cannot read --token-file {token_file}: {exc.strerror}") from exc
        token = lines[0].strip() if lines else ""
        if not token:
            raise UserFacingError(f"--token-file {token_file} is empty")
    token = token if token is not None else environ.get(TOKEN_ENV) or None
    if token is not None and not token.strip():
        raise UserFacingError("the token is empty")
    return token


def _serve(args) -> int:
    from agent.cli import UserFacingError

    token = resolve_token(args.token, args.token_file)
    if args.token is not None:
        log.warning("--token is visible to every user of this machine in `ps`; use $%s or --token-file", TOKEN_ENV)
    try:
        limits = ServerLimits(handshake_timeout_s=args.handshake_timeout, idle_timeout_s=args.idle_timeout,
                              max_connections_per_ip=args.max_connections_per_ip,
                              max_messages_per_s=args.max_messages_per_s, max_message_bytes=args.max_message_bytes,
                              max_failed_auth=args.max_failed_auth)
    except ValueError as exc:
        raise UserFacingError(str(exc)) from exc
    from agent.run_cli import agent_config

    if args.ray:
        from agent.cluster.run import serve_cluster

        if args.devices:
            raise UserFacingError("--devices is for one process; with --ray each replica holds its own device "
                                  "(--gpus-per-replica)")
        try:
            return serve_cluster(args, agent_config(args, realtime=args.pace == "realtime"), token, limits)
        except (ImportError, ValueError) as exc:
            raise UserFacingError(str(exc)) from exc
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    agent = Agent.from_pretrained(args.model, agent_config(args, max_sessions=args.max_sessions, devices=devices,
                                                             realtime=args.pace == "realtime"))
    app = build_app(agent, token=token, ice_servers=args.ice_server, jitter_prefetch=args.jitter_prefetch,
                    limits=limits)
    query = "?token=..." if token else ""
    print(f"model '{agent.bundle.name}' loaded; open http://{args.host}:{args.port}/{query} "
          f"(WebSocket: ws://{args.host}:{args.port}/api/chat)")
    web.run_app(app, host=args.host, port=args.port, print=None)
    return 0
