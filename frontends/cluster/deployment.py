"""The Serve application of `duplex serve --ray`: one replica = one engine, behind Serve's HTTP/WebSocket ingress.

Each replica answers the same endpoints as `duplex serve` (the page, `/api/chat`, `/offer`, `/health`,
`/healthz`) through a Starlette app that Serve's proxy feeds; the conversation code is the one `duplex serve`
runs (`frontends.transports.moshi_ws.converse`, `webrtc.answer_offer`). A WebSocket is one Serve request for
its whole life, so a conversation never moves; Serve counts it as one ongoing request, which is what the
router (`router.FreeSlotRouter`) and the autoscaler read.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request, WebSocket),
# which are local names of _replica_class
import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass

from agent.config import AgentConfig
from frontends.cluster import require_ray
from frontends.transports.limits import ServerLimits

log = logging.getLogger("duplex.cluster")
APP_NAME = "duplex"
DEPLOYMENT_NAME = "DuplexReplica"
REPLICA_HEADER = "x-duplex-replica"  # on the WebSocket upgrade and /health: which replica holds the session


@dataclass
class ClusterConfig:
    replicas: int = 2  # fixed replica count (ignored when max_replicas is set: autoscaling)
    slots_per_replica: int = 4
    min_replicas: int | None = None  # autoscaling between min and max replicas on slot occupancy
    max_replicas: int | None = None
    gpus_per_replica: float | None = None  # None: 1 where the cluster has GPUs, else 0 (`run.serve_cluster`)
    cpus_per_replica: float = 1.0
    drain_timeout_s: float = 300.0  # a stopping replica's live conversations get this long to finish
    health_check_period_s: float = 2.0
    stats_period_s: float = 0.5  # how often each replica reports its capacity to the router

    def __post_init__(self) -> None:
        if self.slots_per_replica < 1 or self.replicas < 1:
            raise ValueError("replicas and slots per replica must be >= 1")
        if self.max_replicas is not None and (self.min_replicas or 0) > self.max_replicas:
            raise ValueError("min replicas must not exceed max replicas")

    def autoscaling(self) -> dict | None:
        """Scale on slot occupancy: Serve's target of ongoing requests (= open conversations) per replica is one
        less than its slots, so a new replica starts before the last slot of the others is taken."""
        if self.max_replicas is None:
            return None
        return {"min_replicas": self.min_replicas if self.min_replicas is not None else 1,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": max(1, self.slots_per_replica - 1),
                "upscale_delay_s": 3.0, "downscale_delay_s": 60.0}


def build_app(model: str, agent: AgentConfig, cluster: ClusterConfig, token: str | None = None,
              limits: ServerLimits | None = None, ice_servers: list[str] | None = None, jitter_prefetch: int = 1):
    """The bound Serve application (`serve.run(build_app(...))`)."""
    _, serve = require_ray()
    from ray.serve.config import RequestRouterConfig

    from frontends.cluster.router import FreeSlotRouter

    agent = dataclasses.replace(agent, max_sessions=cluster.slots_per_replica, devices=None)
    options = dict(
        name=DEPLOYMENT_NAME,
        # one request per conversation, one spare to refuse the next at once (and one for /health or the page)
        max_ongoing_requests=cluster.slots_per_replica + 2,
        ray_actor_options={"num_cpus": cluster.cpus_per_replica, "num_gpus": cluster.gpus_per_replica},
        graceful_shutdown_timeout_s=cluster.drain_timeout_s,
        graceful_shutdown_wait_loop_s=1.0,
        health_check_period_s=cluster.health_check_period_s,
        request_router_config=RequestRouterConfig(request_router_class=FreeSlotRouter,
                                                  request_routing_stats_period_s=cluster.stats_period_s,
                                                  request_routing_stats_timeout_s=5.0),
    )
    autoscaling = cluster.autoscaling()
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = cluster.replicas
    replica = serve.deployment(**options)(_replica_class())
    return replica.bind(model, dataclasses.asdict(agent), token,
                        dataclasses.asdict(limits or ServerLimits()), list(ice_servers or []), jitter_prefetch)


def _replica_class():
    """Made on demand: FastAPI and Serve are imported only with the `cluster` extra."""
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import FileResponse, JSONResponse, Response
    from ray import serve

    api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @serve.ingress(api)
    class DuplexReplica:
        async def __init__(self, model: str, agent: dict, token: str | None, limits: dict,
                           ice_servers: list[str], jitter_prefetch: int):
            from agent.api import Agent
            from frontends.server import ServerState

            self.agent = Agent.from_pretrained(model, AgentConfig(**agent))
            self._started: asyncio.Task | None = None
            self.state = ServerState(agent=self.agent, token=token, ice_servers=ice_servers,
                                     vision_enabled=self.agent.pool.has_vision, jitter_prefetch=jitter_prefetch,
                                     limits=ServerLimits(**limits))
            self.replica_id = serve.get_replica_context().replica_id.to_full_id_str()
            log.info("replica %s ready: %d slots", self.replica_id, self.agent.capacity().slots_total)

        # -- what Serve asks of a replica ------------------------------------------------------------------
        def record_routing_stats(self) -> dict:
            return self.agent.capacity().as_dict()

        def check_health(self) -> None:
            """A replica whose frame loop died is unhealthy: Serve replaces it (its sessions end)."""
            if self._started is None or not self._started.done():
                return
            dead = [i for i, e in enumerate(self.agent.engines) if not e.alive]
            if dead:
                raise RuntimeError(f"engine frame loop not running (engines {dead})")

        async def __del__(self):
            with contextlib.suppress(Exception):
                await self.agent.close()

        async def _start(self) -> None:
            """The engine starts on the event loop that serves the endpoints (Serve may build the replica on
            another one; the frame loop and the sessions must share a loop)."""
            if self._started is None:
                self._started = asyncio.ensure_future(self.agent.start())
            await asyncio.shield(self._started)

        # -- endpoints ----------------------------------------------------------------------------------------
        def _denied(self, ip: str, query, headers, page: bool = False) -> Response | None:
            from frontends.server import token_denial

            denied = token_denial(self.state, ip, query, headers, page)
            if denied is None:
                return None
            if denied.html is not None:
                return Response(denied.html, status_code=denied.status, media_type="text/html")
            return JSONResponse(denied.json, status_code=denied.status, headers=denied.headers)

        @api.get("/")
        async def index(self, request: Request):
            from frontends.server import STATIC

            ip = request.client.host if request.client else "?"
            return self._denied(ip, request.query_params, request.headers, page=True) or \
                FileResponse(STATIC / "index.html")

        @api.get("/healthz")
        async def liveness(self):
            return {"status": "ok"}

        @api.get("/health")
        async def health(self, request: Request):
            ip = request.client.host if request.client else "?"
            denied = self._denied(ip, request.query_params, request.headers)
            if denied:
                return denied
            from frontends.server import health_report

            await self._start()
            return JSONResponse({**health_report(self.state, self.agent), "replica": self.replica_id},
                                headers={REPLICA_HEADER: self.replica_id})

        @api.post("/offer")
        async def offer(self, request: Request):
            from frontends.transports.webrtc import answer_offer

            ip = request.client.host if request.client else "?"
            denied = self._denied(ip, request.query_params, request.headers)
            if denied:
                return denied
            await self._start()
            body = await request.body()
            if len(body) > self.state.limits.max_request_bytes:
                return JSONResponse({"error": "offer too large"}, status_code=413)
            status, answer = await answer_offer(self.state, body, ip)
            return JSONResponse(answer, status_code=status, headers={REPLICA_HEADER: self.replica_id})

        @api.post("/client-report")
        async def client_report(self, request: Request):
            """The page's own report of what it got (as `duplex serve` takes it)."""
            from frontends.server import accept_client_report

            status, answer = accept_client_report(self.state, await request.body())
            return JSONResponse(answer, status_code=status)

        @api.websocket("/api/chat")
        async def chat(self, ws: WebSocket):
            from frontends.transports.limits import BadRequest, TooManyConnections, seed_from_query
            from frontends.transports.moshi_ws import converse

            ip = ws.client.host if ws.client else "?"
            denied = self._denied(ip, ws.query_params, ws.headers)
            if denied is not None:
                await ws.close(code=1008, reason="missing or wrong token")
                return
            await self._start()
            try:
                seed = seed_from_query(ws.query_params)
            except BadRequest as exc:
                await ws.close(code=1008, reason=str(exc)[:120])
                return
            try:
                self.state.connections.acquire(ip)
            except TooManyConnections as exc:
                await ws.close(code=1008, reason=str(exc)[:120])
                return
            try:
                await ws.accept(headers=[(REPLICA_HEADER.encode(), self.replica_id.encode())])
                await converse(StarletteSocket(ws, ip, self.state.limits.max_message_bytes), self.state, seed)
            finally:
                self.state.connections.release(ip)

    return DuplexReplica


class StarletteSocket:
    """`moshi_ws.MessageSocket` over a Starlette WebSocket (what Serve's ingress hands a replica)."""

    def __init__(self, ws, peer: str, max_message_bytes: int):
        self.ws, self.peer, self.max_bytes = ws, peer, max_message_bytes
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def send_bytes(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionError("closed")
        try:
            await self.ws.send_bytes(data)
        except Exception as exc:  # noqa: BLE001 - Starlette raises RuntimeError/WebSocketDisconnect/OSError
            self._closed = True
            raise ConnectionError(str(exc)) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, reason=reason[:120])

    async def messages(self):
        from frontends.transports.moshi_ws import ProtocolViolation

        while not self._closed:
            try:
                msg = await self.ws.receive()
            except (RuntimeError, OSError):
                self._closed = True
                return
            if msg["type"] == "websocket.disconnect":
                self._closed = True
                return
            data = msg.get("bytes")
            text = msg.get("text")
            size = len(data) if data is not None else len(text or "")
            if size > self.max_bytes:
                raise ProtocolViolation(f"message of {size} bytes is larger than {self.max_bytes}")
            yield data if data is not None else (text or "")
