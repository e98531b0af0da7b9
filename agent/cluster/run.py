"""`duplex serve --ray`: start or join a Ray cluster, deploy the replicas, serve until interrupted."""

from __future__ import annotations

import logging
import signal
import threading

from agent.cluster import require_ray
from agent.cluster.deployment import APP_NAME, ClusterConfig, build_app

log = logging.getLogger("duplex.cluster")


def add_arguments(p) -> None:
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


def cluster_config(args, ray) -> ClusterConfig:
    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return ClusterConfig(replicas=args.replicas, slots_per_replica=args.slots_per_replica or args.max_sessions,
                         min_replicas=args.min_replicas, max_replicas=args.max_replicas, gpus_per_replica=gpus,
                         cpus_per_replica=args.cpus_per_replica, drain_timeout_s=args.drain_timeout)


def serve_cluster(args, agent_config, token, limits) -> int:
    ray, serve = require_ray()
    if args.detach and not args.address:
        raise ValueError("--detach needs --address: a local Ray instance ends with this process")
    ray.init(address=args.address, namespace="duplex", log_to_driver=False,
             **({} if args.address else {"include_dashboard": False}))
    cluster = cluster_config(args, ray)
    serve.start(http_options={"host": args.host, "port": args.port})
    if agent_config.device == "auto":
        agent_config.device = "cuda" if cluster.gpus_per_replica else "cpu"
    app = build_app(args.model, agent_config, cluster, token=token, limits=limits, ice_servers=args.ice_server,
                    jitter_prefetch=args.jitter_prefetch)
    serve.run(app, name=APP_NAME, route_prefix="/")
    scale = (f"{cluster.min_replicas or 1}-{cluster.max_replicas} replicas (autoscaling)" if cluster.max_replicas
             else f"{cluster.replicas} replicas")
    query = "?token=..." if token else ""
    print(f"Ray Serve: {scale} x {cluster.slots_per_replica} slots of '{args.model}'; open "
          f"http://{args.host}:{args.port}/{query} (WebSocket: ws://{args.host}:{args.port}/api/chat)", flush=True)
    if args.detach:
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("shutting down Ray Serve", flush=True)
    serve.shutdown()
    ray.shutdown()
    return 0
