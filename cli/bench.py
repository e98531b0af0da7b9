"""`duplex bench TARGET`: every benchmark's command line (the measuring code lives in the `benchmarks` package;
each prints ratios against a named baseline measured in the same run)."""

from __future__ import annotations

import argparse
import os


def add_commands(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print ratios against a named baseline")
    targets = bench.add_subparsers(dest="bench_target", metavar="TARGET")
    _add_codec(targets)
    _add_model_benches(targets)
    for add in (_add_soak, _add_cluster, _add_listening, _add_aec, _add_training):
        add(targets)


def _lazy(module: str, name: str):
    """A handler that imports its benchmark only when that benchmark runs (some need optional extras)."""
    def handler(args) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    return handler


def _add_codec(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("codec", help="per-frame streaming encode+decode time, ours vs the reference moshi package")
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--config", choices=["mimi", "tiny"], default="mimi")
    p.add_argument("--no-reference", action="store_true", help="skip the reference package")
    p.set_defaults(handler=_lazy("benchmarks.codec", "run_codec_bench"))



def _add_model_benches(sub: argparse._SubParsersAction) -> None:
    lm = sub.add_parser("lm", help="~100M LM frame step on the CPU: ours vs reference, hybrid vs attention, memory")
    lm.add_argument("--frames", type=int, default=100, help="timed frames per comparison (default 100)")
    lm.add_argument("--pattern", default="MMMA", help="hybrid block pattern (default MMMA)")
    lm.add_argument("--minutes", type=float, default=10.0,
                    help="simulated session length for the memory check (0 skips it; default 10)")
    lm.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    lm.add_argument("--no-reference", action="store_true", help="skip the reference moshi comparison")
    lm.set_defaults(handler=_lazy("benchmarks.lm_cpu", "run_lm_cpu_bench"))
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
    eng.set_defaults(handler=_lazy("benchmarks.engine", "run_engine_bench"))
    lat = sub.add_parser("latency", help="latency our stack adds over loopback WebSocket and WebRTC")
    lat.add_argument("--seconds", type=float, default=10.0, help="length of the WebSocket stream (default 10)")
    lat.add_argument("--model", default="default")
    lat.add_argument("--device", default="auto")
    lat.set_defaults(handler=_lazy("benchmarks.latency", "run_latency_bench"))
    q = sub.add_parser("quality", help="answers, WER, response latency, talk-over on held-out spoken questions")
    q.add_argument("--model", default="default", help="registered model name or model folder (default: default)")
    q.add_argument("--data", default="data/synth/heldout", help="held-out dialogues (synthesized if missing)")
    q.add_argument("--count", type=int, default=100, help="dialogues to run (default 100)")
    q.add_argument("--batch", type=int, default=16, help="dialogues stepped together as sessions (default 16)")
    q.add_argument("--no-wer", action="store_true", help="skip the whisper transcription")
    q.add_argument("--answers", help="write every scored answer here (JSON lines: kind, question, expected, got)")
    q.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    q.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    q.add_argument("--listening", action="store_true",
                   help="also the listening TEST sets (rewordings, refusals, no-image questions, sessions, real "
                        "human speech) in the same table format as `duplex bench listening`")
    from cli.run import add_backend_args

    add_backend_args(q)
    q.set_defaults(handler=_lazy("benchmarks.quality", "run_quality_bench"))
    v = sub.add_parser("vision", help="added step cost with an image shown, and image-to-token latency")
    v.add_argument("--model", default="default")
    v.add_argument("--frames", type=int, default=100)
    v.add_argument("--trials", type=int, default=6)
    v.add_argument("--device", default="auto")
    v.add_argument("--threads", type=int, default=None)
    v.set_defaults(handler=_lazy("benchmarks.vision", "run_vision_bench"))
    gpu = sub.add_parser("gpu", help="fused kernels and LM frame steps on a GPU, vs the reference")
    gpu.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 128],
                     help="session counts for the whole-frame step (default 1 16 64 128)")
    gpu.add_argument("--skip-lm", action="store_true", help="only the Mamba2 kernel comparison")
    gpu.set_defaults(handler=_lazy("benchmarks.gpu", "run_gpu_bench"))








def _add_aec(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("aec", help="echo cancellation in a simulated room: ERLE and self-interruptions, on vs off")
    p.add_argument("--model", default="default")
    p.add_argument("--delay-ms", type=float, default=120.0, help="speaker-to-microphone delay (default 120)")
    p.add_argument("--echo-gain", type=float, default=0.5, help="direct-path echo level (default 0.5)")
    p.set_defaults(handler=_lazy("benchmarks.aec", "run_aec_bench"))


def _add_cluster(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="Ray Serve vs plain duplex serve: ingress latency, sessions per replica",
                       description="Starts `duplex serve` and a local Ray cluster (`ray start --head`), measures "
                                   "the ping round trip through each and the real-time sessions of 1 and 2 "
                                   "replicas. Needs the cluster extra. Minutes, not part of the test suite.")
    p.add_argument("--model", default="default", help="model name or folder (default: the embedded model)")
    p.add_argument("--slots", type=int, default=8, help="slots per engine/replica (default 8)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the ping run (default 10)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs Ray may use (default: all)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs each replica holds (default 1)")
    p.add_argument("--out", help="write the figures as JSON here")
    p.set_defaults(handler=_lazy("benchmarks.cluster", "run_cluster_bench"))


def _add_listening(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("listening", help="rewordings, refusals, no-image questions, real recordings, long sessions",
                       description="Turn-by-turn scores on the listening test sets (held-out phrasings, held-out "
                                   "voice, real recordings); --selection scores the selection set instead.")
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--selection", action="store_true", help="the selection set (for choosing checkpoints)")
    p.add_argument("--sets", nargs="*", help="only these test sets")
    p.add_argument("--no-real", action="store_true", help="skip the real recordings")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", help="write every scored turn as JSON lines here")
    p.set_defaults(handler=_lazy("benchmarks.listening", "run_listening_bench"))


def _add_soak(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("soak", help="honest sessions with churn beside abusive clients: leaks, RSS, fds, pace",
                       description="Runs a real `duplex serve` process and plays every client over loopback. "
                                   "Not part of the test suite (it runs for minutes).")
    p.add_argument("--sessions", type=int, default=8, help="concurrent honest sessions (default 8)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    p.add_argument("--abusive", type=int, default=1000, help="abusive connections spread over the run (default 1000)")
    p.add_argument("--spare", type=int, default=4, help="slots beyond --sessions for abusive clients (default 4)")
    p.add_argument("--settle", type=float, default=12.0, help="seconds to wait for deadlines at the end")
    p.add_argument("--model", default="default", help="model name or folder (default: the embedded model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the figures as JSON here")
    p.add_argument("--plot", help="write a PNG of RSS, descriptors and held slots over time here")
    p.set_defaults(handler=_lazy("benchmarks.soak", "run_soak_bench"))


def _add_training(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="training frames/s and memory per rank: 1 process vs N torchrun processes, "
                                     "DDP vs FSDP; a Moshi-7B LoRA step on a GPU")
    p.add_argument("--procs", type=int, default=2, help="torchrun processes to compare with one (default 2)")
    p.add_argument("--steps", type=int, default=12, help="steps per configuration (the first 2 are not timed)")
    p.add_argument("--batch", type=int, default=8, help="global batch (default 8)")
    p.add_argument("--frames", type=int, default=64, help="frames per sequence (default 64 = 5.1 s)")
    p.add_argument("--dialogues", type=int, default=32, help="synthesized dialogues to train on (default 32)")
    p.add_argument("--lora", type=int, default=0, help="LoRA rank (default 0: full training)")
    p.add_argument("--moshi-7b", action="store_true",
                   help="instead: one LoRA step of a Moshi-7B-shaped model at batch 1 (needs CUDA)")
    p.add_argument("--json", help="also write the figures here")
    p.set_defaults(handler=_lazy("benchmarks.training", "run_training_bench"))
