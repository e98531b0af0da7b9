"""LM-related commands: `duplex bench lm` and `duplex bench gpu`."""

from __future__ import annotations

import argparse
import os


def add_bench(sub: argparse._SubParsersAction) -> None:
    lm = sub.add_parser("lm", help="~100M LM frame step on the CPU: ours vs reference, hybrid vs attention, memory")
    lm.add_argument("--frames", type=int, default=100, help="timed frames per comparison (default 100)")
    lm.add_argument("--pattern", default="MMMA", help="hybrid block pattern (default MMMA)")
    lm.add_argument("--minutes", type=float, default=10.0,
                    help="simulated session length for the memory check (0 skips it; default 10)")
    lm.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    lm.add_argument("--no-reference", action="store_true", help="skip the reference moshi comparison")
    lm.set_defaults(handler=_lm)
    eng = sub.add_parser("engine", help="batched frame step (codec + LM) for N concurrent sessions; max real-time N")
    eng.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16, 64])
    eng.add_argument("--frames", type=int, default=30, help="timed frames per N (default 30)")
    eng.add_argument("--model", default="default", help="model name or folder (default: the embedded default)")
    eng.add_argument("--device", default="auto")
    eng.add_argument("--threads", type=int, default=None)
    eng.add_argument("--no-search", dest="search", action="store_false",
                     help="do not bisect the largest real-time N between measured points")
    eng.add_argument("--backend", choices=["torch", "onnx", "both"], default="torch",
                     help="torch (default), onnx, or both: the two stepped alternately in one run, with ratios")
    eng.add_argument("--onnx-dir", help="graphs from `duplex export onnx` (default: exported on first use)")
    eng.add_argument("--onnx-quantize", choices=["int8"], help="int8 dynamic quantisation of the ONNX matmuls")
    eng.set_defaults(handler=_engine)
    lat = sub.add_parser("latency", help="latency our stack adds over loopback WebSocket and WebRTC")
    lat.add_argument("--seconds", type=float, default=10.0, help="length of the WebSocket stream (default 10)")
    lat.add_argument("--model", default="default")
    lat.add_argument("--device", default="auto")
    lat.set_defaults(handler=_latency)
    q = sub.add_parser("quality", help="answers, WER, response latency, talk-over on held-out spoken questions")
    q.add_argument("--model", default="default", help="registered model name or model folder (default: default)")
    q.add_argument("--data", default="data/synth/heldout", help="held-out dialogues (synthesized if missing)")
    q.add_argument("--count", type=int, default=100, help="dialogues to run (default 100)")
    q.add_argument("--batch", type=int, default=16, help="dialogues stepped together as sessions (default 16)")
    q.add_argument("--no-wer", action="store_true", help="skip the whisper transcription")
    q.add_argument("--answers", help="write every scored answer here (JSON lines: kind, question, expected, got)")
    q.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    q.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    from agent.run_cli import add_backend_args

    add_backend_args(q)
    q.set_defaults(handler=_quality)
    v = sub.add_parser("vision", help="added step cost with an image shown, and image-to-token latency")
    v.add_argument("--model", default="default")
    v.add_argument("--frames", type=int, default=100)
    v.add_argument("--trials", type=int, default=6)
    v.add_argument("--device", default="auto")
    v.add_argument("--threads", type=int, default=None)
    v.set_defaults(handler=_vision)
    gpu = sub.add_parser("gpu", help="fused kernels and LM frame steps on a GPU, vs the reference")
    gpu.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 128],
                     help="session counts for the whole-frame step (default 1 16 64 128)")
    gpu.add_argument("--skip-lm", action="store_true", help="only the Mamba2 kernel comparison")
    gpu.set_defaults(handler=_gpu)


def _lm(args) -> int:
    from agent.benchmarks.lm_cpu import run_lm_cpu_bench

    return run_lm_cpu_bench(args)


def _engine(args) -> int:
    from agent.benchmarks.engine import run_engine_bench

    return run_engine_bench(args)


def _latency(args) -> int:
    from agent.benchmarks.latency import run_latency_bench

    return run_latency_bench(args)


def _quality(args) -> int:
    from agent.benchmarks.quality import run_quality_bench

    return run_quality_bench(args)


def _vision(args) -> int:
    from agent.benchmarks.vision import run_vision_bench

    return run_vision_bench(args)


def _gpu(args) -> int:
    from agent.benchmarks.gpu import run_gpu_bench

    return run_gpu_bench(args)
