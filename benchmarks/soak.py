"""`duplex bench soak`: honest sessions with reconnect churn beside a stream of abusive clients, for minutes.

The server is a real `duplex serve` process; this process plays every client over loopback. Every 10 s it
reads the server's RSS and open descriptors from /proc and its held slots from /health. What it reports:
slots leaked at the end (held once every client is gone and the deadlines have passed), honest sessions lost
(refused, cut off, or silent), the honest sessions' output pace (seconds of model audio per second of wall
time), and whether RSS and descriptors stay flat (last third vs first third after warm-up).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ABUSES = ("rst_before_101", "rst_after_101", "continuation", "huge_length", "close_999", "corrupt_ogg",
          "silent_upgrade", "junk_offer", "ice_never", "bad_seed", "wrong_token")


@dataclass
class SoakResult:
    samples: list[dict] = field(default_factory=list)  # every 10 s: t, rss_mb, fds, sessions, abusive
    honest_sessions: int = 0
    refused_full: int = 0  # "server full" answers (retried): the capacity limit working, not a loss
    sessions_lost: int = 0
    lost_reasons: list[str] = field(default_factory=list)
    paces: list[float] = field(default_factory=list)
    abusive: dict[str, int] = field(default_factory=dict)
    leaked_slots: int = -1


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 24000)) / 24000
    return (0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)


async def _honest(http, base: str, token: str, seconds: float, result: SoakResult, seed: int) -> None:
    """One Moshi client streaming in real time for `seconds`; records its output pace or why it was lost."""
    import aiohttp
    import sphn

    result.honest_sessions += 1
    for attempt in range(5):  # a real client retries a full server after a moment
        try:
            ws = await http.ws_connect(f"{base}/api/chat?worker_auth_id={token}&audio_seed={seed}")
        except aiohttp.ClientError as exc:
            result.sessions_lost += 1
            result.lost_reasons.append(f"connect: {exc}")
            return
        first = await ws.receive(timeout=10)
        if first.type == aiohttp.WSMsgType.BINARY and first.data[:1] == b"\x00":
            break
        await ws.close()
        if first.type == aiohttp.WSMsgType.BINARY and b"server full" in first.data and attempt < 4:
            result.refused_full += 1
            await asyncio.sleep(1.0)
            continue
        result.sessions_lost += 1
        result.lost_reasons.append(f"no handshake: {first.data[:60]!r}")
        return
    writer, reader = sphn.OpusStreamWriter(24000), sphn.OpusStreamReader(24000)
    received = 0

    async def receive():
        nonlocal received
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x01":
                pcm = reader.append_bytes(msg.data[1:])
                received += 0 if pcm is None else pcm.size

    rx = asyncio.ensure_future(receive())
    pcm = _tone(seconds)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i, start in enumerate(range(0, pcm.size, 1920)):
        page = writer.append_pcm(pcm[start:start + 1920])
        if page:
            await ws.send_bytes(b"\x01" + page)
        await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.08 - loop.time()))
        if rx.done():
            break
    elapsed = loop.time() - t0
    cut_off = rx.done()
    await ws.close()
    rx.cancel()
    pace = received / 24000 / elapsed
    if cut_off or pace < 0.5:
        result.sessions_lost += 1
        result.lost_reasons.append("cut off" if cut_off else f"silent (pace {pace:.2f})")
    else:
        result.paces.append(pace)


def _upgrade(port: int, token: str, query: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /api/chat?worker_auth_id={token}{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket"
            f"\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def _frame(opcode: int, payload: bytes = b"", length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    head = bytes([0x80 | opcode, 0x80 | n]) if n < 126 else bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", n)
    return head + b"\0\0\0\0" + payload  # zero mask key: payload as is


async def _raw(port: int, token: str, after: bytes = b"", read_101: bool = True, linger: float = 0.05,
               hold: float = 0.0) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_upgrade(port, token))
        await writer.drain()
        if read_101:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if after:
            writer.write(after)
            await writer.drain()
        await asyncio.sleep(linger + hold)
    except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        pass
    finally:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()


async def _abuse(kind: str, http, base: str, port: int, token: str, rng: random.Random, offer_sdp: str) -> None:
    if kind == "rst_before_101":
        await _raw(port, token, read_101=False)
    elif kind == "rst_after_101":
        await _raw(port, token)
    elif kind == "continuation":
        await _raw(port, token, _frame(0x0, b"abc"))
    elif kind == "huge_length":
        await _raw(port, token, _frame(0x2, length=2**63 - 1)[:10])
    elif kind == "close_999":
        await _raw(port, token, _frame(0x8, struct.pack(">H", 999)))
    elif kind == "silent_upgrade":  # holds its socket past the handshake deadline
        await _raw(port, token, hold=7.0)
    elif kind == "corrupt_ogg":
        ws = await http.ws_connect(f"{base}/api/chat?worker_auth_id={token}")
        for _ in range(5):
            await ws.send_bytes(b"\x01" + rng.randbytes(40))
            await ws.send_bytes(b"\x01OggS" + rng.randbytes(60))
        ws._response.connection.transport.abort()
    elif kind in ("junk_offer", "ice_never", "bad_seed"):
        body = {"junk_offer": rng.randbytes(200), "ice_never": json.dumps({"sdp": offer_sdp, "type": "offer"}),
                "bad_seed": json.dumps({"sdp": offer_sdp, "type": "offer", "seed": "x" * 10})}[kind]
        async with http.post(f"{base}/offer?token={token}", data=body) as resp:
            await resp.read()
    elif kind == "wrong_token":  # counted as a guess (the server runs with a lockout above the run's guesses:
        # on loopback every client shares one address, and a lockout would refuse the honest ones too)
        async with http.get(f"{base}/api/chat?worker_auth_id={rng.randbytes(8).hex()}") as resp:
            assert resp.status == 401, resp.status
    else:  # pragma: no cover
        raise ValueError(kind)


async def _soak(args, port: int, token: str, pid: int) -> SoakResult:
    import aiohttp
    from aiortc import RTCPeerConnection

    result = SoakResult(abusive={k: 0 for k in ABUSES})
    base = f"http://127.0.0.1:{port}"
    rng = random.Random(args.seed)
    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    offer_sdp = pc.localDescription.sdp
    await pc.close()
    duration = args.minutes * 60
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def health() -> dict:
            async with http.get(f"{base}/health?token={token}") as resp:
                return await resp.json()

        async def honest_slot(i: int) -> None:
            n = 0
            while loop.time() - t0 < duration - 5:
                seconds = min(rng.uniform(15, 45), duration - (loop.time() - t0))
                await _honest(http, base, token, seconds, result, seed=1000 * i + n)
                n += 1
                await asyncio.sleep(rng.uniform(0.1, 1.0))  # reconnect churn

        async def abuser() -> None:
            gap = duration * 0.9 / max(1, args.abusive)
            tasks: set[asyncio.Task] = set()
            for _ in range(args.abusive):
                kind = rng.choice(ABUSES)
                result.abusive[kind] += 1
                task = asyncio.ensure_future(_abuse(kind, http, base, port, token, rng, offer_sdp))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await asyncio.sleep(gap)
            await asyncio.gather(*tasks, return_exceptions=True)

        async def monitor() -> None:
            while loop.time() - t0 < duration:
                h = await health()
                sample = {"t": round(loop.time() - t0, 1), "rss_mb": round(_proc_rss_mb(pid), 1),
                          "fds": _proc_fds(pid), "sessions": h["sessions"],
                          "abusive": sum(result.abusive.values())}
                result.samples.append(sample)
                print(f"  t={sample['t']:6.1f} s  RSS {sample['rss_mb']:7.1f} MB  fds {sample['fds']:4d}  "
                      f"sessions {sample['sessions']:2d}  abusive so far {sample['abusive']}", flush=True)
                await asyncio.sleep(10)

        await asyncio.gather(monitor(), abuser(), *(honest_slot(i) for i in range(args.sessions)))
        await asyncio.sleep(args.settle)  # every deadline has passed; nobody is connected
        h = await health()
        result.leaked_slots = h["sessions"]
        result.samples.append({"t": round(loop.time() - t0, 1), "rss_mb": round(_proc_rss_mb(pid), 1),
                               "fds": _proc_fds(pid), "sessions": h["sessions"],
                               "abusive": sum(result.abusive.values())})
    return result


def _flat(values: list[float]) -> tuple[float, float]:
    """(mean of the first third, mean of the last third) after the first sample (warm-up)."""
    v = values[1:] or values
    k = max(1, len(v) // 3)
    return float(np.mean(v[:k])), float(np.mean(v[-k:]))


def run_soak_bench(args) -> int:
    from agent.errors import UserFacingError

    try:
        import aiohttp  # noqa: F401
        import aiortc  # noqa: F401
    except ImportError as exc:
        raise UserFacingError("bench soak needs the serve extra: pip install 'duplex-agent[serve]'") from exc
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = base64.urlsafe_b64encode(os.urandom(12)).decode()
    cmd = [sys.executable, "-m", "cli", "serve", "--port", str(port), "--model", args.model,
           "--max-sessions", str(args.sessions + args.spare), "--handshake-timeout", "5", "--idle-timeout", "10",
           "--max-connections-per-ip", "1000", "--max-failed-auth", "1000000"]
    env = dict(os.environ, DUPLEX_TOKEN=token)
    print(f"soak: {args.sessions} honest sessions with reconnect churn, {args.abusive} abusive connections, "
          f"{args.minutes:g} min, model '{args.model}' (server: a `duplex serve` process on port {port})")
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import urllib.request

        for _ in range(600):
            if server.poll() is not None:
                raise UserFacingError(f"the server exited: {server.stderr.read()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        result = asyncio.run(_soak(args, port, token, server.pid))
        alive = server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    rss0, rss1 = _flat([s["rss_mb"] for s in result.samples])
    fd0, fd1 = _flat([s["fds"] for s in result.samples])
    paces = np.array(result.paces) if result.paces else np.zeros(1)
    summary = {
        "device": "cpu", "cores": os.cpu_count(), "minutes": args.minutes, "sessions": args.sessions,
        "honest_sessions": result.honest_sessions, "refused_full_then_retried": result.refused_full,
        "sessions_lost": result.sessions_lost,
        "lost_reasons": result.lost_reasons[:10], "abusive": result.abusive,
        "abusive_total": sum(result.abusive.values()), "leaked_slots": result.leaked_slots,
        "server_alive": alive, "pace_min": round(float(paces.min()), 3),
        "pace_median": round(float(np.median(paces)), 3),
        "rss_mb_first_third": round(rss0, 1), "rss_mb_last_third": round(rss1, 1),
        "fds_first_third": round(fd0, 1), "fds_last_third": round(fd1, 1), "samples": result.samples,
    }
    print(f"\nhonest sessions {result.honest_sessions}, lost {result.sessions_lost} (refused while full and retried: "
          f"{result.refused_full}); output pace min "
          f"{summary['pace_min']}, median {summary['pace_median']} (1.0 = real time)")
    print(f"abusive connections {summary['abusive_total']}; slots leaked after the deadlines: {result.leaked_slots}; "
          f"server alive: {alive}")
    print(f"server RSS {rss0:.1f} -> {rss1:.1f} MB, open descriptors {fd0:.1f} -> {fd1:.1f} "
          "(first vs last third of the run)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.out}")
    if args.plot:
        _plot(result.samples, args.plot, summary)
        print(f"wrote {args.plot}")
    ok = alive and result.leaked_slots == 0 and result.sessions_lost == 0
    return 0 if ok else 1


def _plot(samples: list[dict], path: str, summary: dict) -> None:
    try:
        import matplotlib
    except ImportError as exc:
        from agent.errors import UserFacingError

        raise UserFacingError("--plot needs matplotlib: pip install 'duplex-agent[bench]'") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    for ax, key, label in zip(axes, ("rss_mb", "fds", "sessions"), ("server RSS (MB)", "open descriptors",
                                                                     "held slots")):
        ax.plot(t, [s[key] for s in samples], marker=".")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, max(s["rss_mb"] for s in samples) * 1.15)
    axes[1].set_ylim(0, max(s["fds"] for s in samples) * 1.3)
    axes[-1].set_xlabel("minutes")
    fig.suptitle(f"soak: {summary['sessions']} honest sessions with churn + {summary['abusive_total']} abusive "
                 f"connections; leaked {summary['leaked_slots']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
