"""`duplex serve`: the browser client page, WebRTC signalling, the Moshi-protocol WebSocket and /health.

With a token set, every endpoint but the liveness probe `/healthz` needs it (`?token=`, Moshi's
`?worker_auth_id=`, or `Authorization: Bearer`); an address that guesses wrong too often is told to wait (429).
A client's mistake is answered with a JSON reason and logged as one line; tracebacks are for our own bugs.
"""

from __future__ import annotations

import collections
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from agent.api import Agent
from frontends.transports.keys import SERVER
from frontends.transports.limits import AuthGuard, ConnectionCounter, ServerLimits

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


@dataclass
class Denial:
    """Why a request may not pass the token check, as any web framework answers it."""

    status: int  # 401 (missing or wrong token) or 429 (too many wrong guesses from this address)
    json: dict | None = None
    html: str | None = None  # the token page, for a person at "/"
    headers: dict[str, str] = field(default_factory=dict)


def token_denial(state: ServerState, ip: str, query, headers, page: bool = False) -> Denial | None:
    """The one token decision of both servers (`duplex serve` and the Ray Serve replicas); None: let it pass."""
    if state.token is None:
        return None
    wait = state.auth.retry_after(ip)
    if wait > 0:
        return Denial(429, json={"error": f"too many wrong tokens; retry in {wait:.0f} s"},
                      headers={"Retry-After": str(max(1, round(wait)))})
    offered = credentials(query, headers)
    if state.auth.check(ip, offered):
        return None
    log.info("wrong or missing token from %s", ip)
    if page:  # a person at the page: say what is wrong, in the page's own words
        message = ("Wrong token: check it with whoever runs this server." if any(offered) else
                   "This server needs a token: enter the one you were given.")
        return Denial(401, html=TOKEN_PAGE.format(message=message))
    return Denial(401, json={"error": "missing or wrong token (?token=, ?worker_auth_id= for Moshi clients, or "
                                      "Authorization: Bearer)"})


def _middlewares(state: ServerState):
    @web.middleware
    async def guard(request: web.Request, handler):
        if request.path not in PUBLIC_PATHS:
            denied = token_denial(state, request.remote or "?", request.query, request.headers,
                                  page=request.path == "/")
            if denied is not None:
                if denied.html is not None:
                    return web.Response(text=denied.html, content_type="text/html", status=denied.status)
                return web.json_response(denied.json, status=denied.status, headers=denied.headers)
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except ConnectionError as exc:  # the client went away mid-request: its business, not a bug of ours
            log.info("%s left during %s %s: %s", request.remote, request.method, request.path, exc)
            return web.Response(status=499)

    return [guard]


def health_report(state: ServerState, agent) -> dict:
    """What /health says, the same for `duplex serve` and each Ray Serve replica (which adds its id)."""
    return {"status": "ok", "model": agent.bundle.name, "backend": agent.config.backend,
            "sessions": agent.engine.sessions, "max_sessions": agent.config.max_sessions,
            **agent.capacity().as_dict(), "vision": state.vision_enabled,
            "engines": [c.as_dict() for c in agent.engine_capacities()],
            "webrtc_peers": len(state.peers), "websockets": len(state.websockets)}


def accept_client_report(state: ServerState, body: bytes) -> tuple[int, dict]:
    """The page's own report of what it got: kept (last 32) and logged; (HTTP status, JSON answer)."""
    limit = state.limits.max_report_bytes
    if len(body) > limit:
        return 413, {"error": f"report larger than {limit} bytes"}
    try:
        report = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return 400, {"error": "expected JSON"}
    if not isinstance(report, dict):
        return 400, {"error": "expected a JSON object"}
    state.client_reports.append(report)
    log.info("client report: %s", json.dumps(report)[:2000])
    return 200, {"ok": True}


def build_app(agent: Agent, token: str | None = None, ice_servers: list[str] | None = None,
              jitter_prefetch: int | None = 1, limits: ServerLimits | None = None) -> web.Application:
    from frontends.transports.moshi_ws import handle_chat
    from frontends.transports.webrtc import handle_offer

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
        return web.json_response(health_report(state, agent))

    async def client_report(request: web.Request) -> web.StreamResponse:
        status, answer = accept_client_report(state, await request.content.read(limits.max_report_bytes + 1))
        return web.json_response(answer, status=status)

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
