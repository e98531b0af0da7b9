"""`duplex bench cluster`: what Ray Serve costs and buys, against plain `duplex serve`, in one run.

1. The ingress hop: Moshi-protocol pings (0x06, answered by the replica's own code) sent every 80 ms through a
   live conversation, round trip through plain `duplex serve` vs through Serve's proxy to a replica; the added
   median is what every frame pays each way and back.
2. Sessions kept in real time by 1 replica vs 2 replicas (same slots each): concurrent real-time conversations
   are added until one falls behind (its reply arrives slower than 0.95x real time, or stalls over 0.5 s).

Every server is a real process (`ray start --head` + `duplex serve --ray --detach`; `duplex serve`), clients
stream real speech over loopback.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.moshi_client import RATE, converse
from benchmarks.ports import free_port
from benchmarks.ray_cluster import BIN, LocalRayCluster, wait_health

EXAMPLE = Path(__file__).resolve().parents[1] / "agent" / "examples" / "what_do_you_see.wav"


@dataclass
class ClusterBench:
    ping_ms_plain: float = 0.0
    ping_ms_serve: float = 0.0
    added_ms: float = 0.0
    sessions_1_replica: int = 0
    sessions_2_replicas: int = 0
    levels: dict = field(default_factory=dict)


async def _ping_rtts(port: int, seconds: float, speech: np.ndarray) -> list[float]:
    """Round trips of pings sent every 80 ms beside a real-time conversation."""
    import aiohttp

    rtts: list[float] = []
    async with aiohttp.ClientSession() as http:
        talk = asyncio.ensure_future(converse(http, f"ws://127.0.0.1:{port}/api/chat", speech))
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}/api/chat")
        first = await ws.receive(timeout=60)
        if first.data[:1] != b"\x00":
            raise RuntimeError(f"no slot for the ping client: {first.data[:80]!r}")
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        silence = np.zeros(1920, np.float32)
        import sphn

        writer = sphn.OpusStreamWriter(RATE)
        while loop.time() < end:
            page = writer.append_pcm(silence)  # keep the session alive (the idle deadline wants audio)
            if page:
                await ws.send_bytes(b"\x01" + page)
            t0 = loop.time()
            await ws.send_bytes(b"\x06")
            while True:
                msg = await ws.receive(timeout=10)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    raise RuntimeError("ping client lost its session")
                if msg.data[:1] == b"\x06":
                    rtts.append((loop.time() - t0) * 1e3)
                    break
            await asyncio.sleep(max(0.0, t0 + 0.08 - loop.time()))
        await ws.close()
        await talk
    return rtts


async def _level(port: int, n: int, speech: np.ndarray) -> bool:
    """n concurrent real-time conversations; True if every one got its reply in real time."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*[converse(http, f"ws://127.0.0.1:{port}/api/chat?audio_seed={i}", speech,
                                                  tail_s=1.0) for i in range(n)])
    for r in results:
        if not r.accepted or r.errors or r.closed_by_server:
            return False
        times = np.array(r.page_times)
        if times.size < 10:
            return False
        span = times[-1] - times[0]
        if r.received_s() / max(span, 1e-6) < 0.95 or np.diff(times).max() > 0.5:
            return False
    return True


async def _max_sessions(port: int, speech: np.ndarray, limit: int, log: dict, name: str) -> int:
    best = 0
    for n in range(1, limit + 1):
        ok = await _level(port, n, speech)
        log.setdefault(name, []).append({"sessions": n, "real_time": ok})
        print(f"  {name}: {n} sessions {'kept real time' if ok else 'fell behind'}", flush=True)
        if not ok:
            break
        best = n
    return best


def run_cluster_bench(args) -> int:
    from agent.audio import load_audio
    from agent.errors import UserFacingError
    from frontends.cluster import require_ray

    try:
        require_ray()
    except ImportError as exc:
        raise UserFacingError(str(exc)) from exc
    speech = load_audio(EXAMPLE).samples
    speech = np.concatenate([speech, np.zeros(RATE * 2, np.float32), speech])
    out = ClusterBench()

    print(f"plain `duplex serve` (1 engine, {args.slots} slots) ...", flush=True)
    port = free_port()
    plain = subprocess.Popen([str(BIN / "duplex"), "serve", "--model", args.model, "--port", str(port),
                              "--max-sessions", str(args.slots), "--device", "cpu"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_health(port)
        out.ping_ms_plain = float(np.median(asyncio.run(_ping_rtts(port, args.seconds, speech))))
    finally:
        plain.terminate()
        plain.wait(30)

    print("Ray Serve (ray start --head; duplex serve --ray --detach) ...", flush=True)
    cluster = LocalRayCluster(cpus=args.cpus)
    try:
        cluster.deploy(1, args.slots, args.cpus_per_replica, model=args.model)
        out.ping_ms_serve = float(np.median(asyncio.run(_ping_rtts(cluster.port, args.seconds, speech))))
        out.added_ms = out.ping_ms_serve - out.ping_ms_plain
        print(f"ping round trip: plain {out.ping_ms_plain:.2f} ms, through Serve {out.ping_ms_serve:.2f} ms "
              f"(+{out.added_ms:.2f} ms per frame; goal <= 5 ms)", flush=True)
        out.sessions_1_replica = asyncio.run(_max_sessions(cluster.port, speech, args.slots, out.levels,
                                                           "1 replica"))
        cluster.deploy(2, args.slots, args.cpus_per_replica, model=args.model)
        out.sessions_2_replicas = asyncio.run(_max_sessions(cluster.port, speech, 2 * args.slots, out.levels,
                                                            "2 replicas"))
    finally:
        cluster.stop()
    ratio = out.sessions_2_replicas / max(out.sessions_1_replica, 1)
    print(f"\nsessions kept in real time: 1 replica {out.sessions_1_replica}, 2 replicas "
          f"{out.sessions_2_replicas} ({ratio:.2f}x)")
    print(f"Serve's ingress hop adds {out.added_ms:+.2f} ms per frame (ping round trip, median; "
          f"{out.ping_ms_serve / max(out.ping_ms_plain, 1e-6):.2f}x plain)")
    if args.out:
        Path(args.out).write_text(json.dumps(asdict(out), indent=2))
    return 0
