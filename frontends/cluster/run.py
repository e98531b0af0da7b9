"""`duplex serve --ray`: start or join a Ray cluster, deploy the replicas, serve until interrupted (the command's
arguments are in `cli.serve`)."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading

from frontends.cluster import require_ray
from frontends.cluster.deployment import APP_NAME, ClusterConfig, build_app

log = logging.getLogger("duplex.cluster")


def serve_cluster(args, cluster: ClusterConfig, agent_config, token, limits) -> int:
    ray, serve = require_ray()
    if args.detach and not args.address:
        raise ValueError("--detach needs --address: a local Ray instance ends with this process")
    ray.init(address=args.address, namespace="duplex", log_to_driver=False,
             **({} if args.address else {"include_dashboard": False}))
    if cluster.gpus_per_replica is None:  # what the cluster has decides
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        cluster = dataclasses.replace(cluster, gpus_per_replica=gpus)
    for attempt in range(3):  # Serve gives its proxy 60 s to start: a loaded machine may need another try
        try:
            serve.start(http_options={"host": args.host, "port": args.port})
            break
        except (ray.exceptions.ActorDiedError, ray.exceptions.GetTimeoutError) as exc:
            if attempt == 2:
                raise ConnectionError(f"Serve's HTTP proxy did not start: {exc}") from exc
            log.warning("Serve's HTTP proxy did not start in time (%s); trying again", type(exc).__name__)
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
