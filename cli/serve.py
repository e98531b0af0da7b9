"""`duplex serve`: the browser page, WebRTC signalling, the Moshi-protocol WebSocket and /health, from one process
(`frontends.server`) or from Ray Serve replicas across GPUs and machines (`--ray`, `frontends.cluster`)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from agent.errors import UserFacingError
from frontends.server import TOKEN_ENV
from frontends.transports.limits import ServerLimits

log = logging.getLogger("duplex.serve")


def add_command(sub: argparse._SubParsersAction) -> None:
    from cli.run import add_model_args

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
    _add_cluster_arguments(p)
    p.set_defaults(handler=_serve)


def resolve_token(token: str | None, token_file: Path | None, environ=os.environ) -> str | None:
    """--token, else --token-file, else $DUPLEX_TOKEN; None if none is given."""
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
    from aiohttp import web

    from agent.api import Agent
    from frontends.server import build_app

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
    from cli.run import agent_config

    if args.ray:
        from frontends.cluster.run import serve_cluster

        if args.devices:
            raise UserFacingError("--devices is for one process; with --ray each replica holds its own device "
                                  "(--gpus-per-replica)")
        try:
            config = agent_config(args, realtime=args.pace == "realtime")
            return serve_cluster(args, _cluster_config(args), config, token, limits)
        except (ImportError, ValueError) as exc:
            raise UserFacingError(str(exc)) from exc
        except ConnectionError as exc:  # no cluster at --address, or Ray's token missing
            raise UserFacingError(f"cannot join the Ray cluster at {args.address}: {exc}") from exc
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


def _add_cluster_arguments(p) -> None:
    g = p.add_argument_group("Ray Serve (--ray; extra `cluster`)")
    g.add_argument("--ray", action="store_true",
                   help="serve through Ray Serve: one replica per engine, placed across the cluster's GPUs/nodes")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join ('auto': the one `ray start --head` runs here; default: start a "
                        "local one)")
    g.add_argument("--replicas", type=int, default=2, help="replicas (engines) to run (default 2)")
    g.add_argument("--slots-per-replica", type=int, default=None, metavar="M",
                   help="conversations per replica (default: --max-sessions)")
    g.add_argument("--min-replicas", type=int, default=None, help="autoscaling: fewest replicas (default 1)")
    g.add_argument("--max-replicas", type=int, default=None,
                   help="autoscaling on slot occupancy up to this many replicas (default: fixed --replicas)")
    g.add_argument("--gpus-per-replica", type=float, default=None,
                   help="GPUs each replica holds (default: 1 when the cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs each replica holds (default 1)")
    g.add_argument("--detach", action="store_true",
                   help="with --address: deploy (or update: a rolling upgrade that drains the replicas it stops) "
                        "and exit, leaving the application running on the cluster")
    g.add_argument("--drain-timeout", type=float, default=300.0, metavar="S",
                   help="a stopping replica (downscale, upgrade) lets its conversations finish for up to S "
                        "seconds (default 300)")


def _cluster_config(args):
    from frontends.cluster.deployment import ClusterConfig

    return ClusterConfig(replicas=args.replicas, slots_per_replica=args.slots_per_replica or args.max_sessions,
                         min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                         gpus_per_replica=args.gpus_per_replica,
                         cpus_per_replica=args.cpus_per_replica, drain_timeout_s=args.drain_timeout)
