"""`duplex run` (offline full-duplex simulation) and `duplex models` (local model registry)."""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path

import numpy as np

from models.codec import FRAME_SIZE as FRAME
from models.codec import SAMPLE_RATE as RATE


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="registered model name (see `duplex models`) or a local model folder (default: default)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    add_backend_args(p)


def add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="torch (default) or onnx: the frame step through ONNX Runtime (exported on first use and "
                        "cached, or from --onnx-dir)")
    p.add_argument("--onnx-dir", help="graphs from `duplex export onnx` (with --backend onnx)")
    p.add_argument("--onnx-quantize", choices=["int8"],
                   help="with --backend onnx: int8 dynamic quantisation of the matrix products")


def agent_config(args, **fields):
    """AgentConfig from the shared model/backend arguments plus command-specific fields."""
    from agent.config import config_from_args

    return config_from_args(args, **fields)


def add_commands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run", help="offline full-duplex run: user audio in, the model's audio and text out",
        description="Play USER audio to the model frame by frame in real-time order (faster than real time when "
                    "the machine allows) and record what it says, exactly as a live session would.")
    run.add_argument("--input", required=True, help="the user's audio (any common format, rate, channels)")
    run.add_argument("--output", required=True, help="WAV file for the model's audio (24 kHz mono)")
    run.add_argument("--text", help="text file for the model's text stream with timestamps")
    run.add_argument("--image", help="an image the model sees from the start (vision models only)")
    run.add_argument("--tail", type=float, default=2.0,
                     help="seconds of silence after the input, so the model can answer (default 2)")
    run.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same output)")
    run.add_argument("--realtime", action="store_true", help="pace at real time instead of as fast as possible")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(run)
    run.set_defaults(handler=_run)

    models = sub.add_parser("models", help="list the models available locally, or register a folder",
                            description="Without an action: list models (embedded default, registered folders).")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    add = msub.add_parser("add", help="register a local model folder under a name")
    add.add_argument("name")
    add.add_argument("folder", help="our model folder (duplex.json) or kyutai's Moshi release folder")
    add.set_defaults(handler=_models_add)
    models.set_defaults(handler=_models_list)


def _models_list(args) -> int:
    from agent import registry
    from agent.bundle import describe_folder
    from agent.errors import DuplexError

    rows = []
    embedded = registry.embedded_models()
    for name, folder in registry.available().items():
        origin = "embedded" if embedded.get(name) == folder else "config"
        try:
            files = describe_folder(folder, name)
            missing = files.missing()
            status = "ok" if not missing else "missing " + ", ".join(p.name for p in missing)
            if not files.trained:
                status += " (untrained)"
            rows.append((name, f"{files.kind}/{origin}", status, f"{files.size_bytes() / 1e6:.0f} MB", str(folder)))
        except DuplexError as exc:
            rows.append((name, origin, f"error: {exc}", "-", str(folder)))
    widths = [max(len(r[i]) for r in rows + [("NAME", "KIND", "STATUS", "SIZE", "FOLDER")]) for i in range(5)]
    for r in [("NAME", "KIND", "STATUS", "SIZE", "FOLDER"), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"\nconfig file: {registry.config_path()}"
          f"{'' if registry.config_path().is_file() else ' (not created yet)'}")
    print("register kyutai's Moshi release folder with: duplex models add moshiko /path/to/moshiko-pytorch-bf16")
    return 0


def _models_add(args) -> int:
    from agent import registry

    path = registry.add(args.name, args.folder)
    print(f"registered '{args.name}' -> {Path(args.folder).expanduser().resolve()} in {path}")
    return 0


def _format_time(t: float) -> str:
    return f"{int(t // 60):02d}:{t % 60:05.2f}"


async def _simulate(args, samples: np.ndarray, progress) -> tuple[np.ndarray, list, list]:
    from agent import Agent, AudioOut, Error, TextToken, Transcript

    agent = Agent.from_pretrained(args.model, agent_config(args, max_sessions=1, realtime=args.realtime))
    total = math.ceil(samples.size / FRAME)
    out = np.zeros(total * FRAME, np.float32)
    tokens: list = []
    utterances: list = []
    errors: list[str] = []
    async with agent, agent.session(seed=args.seed) as s:
        if args.image:
            await s.show_image(args.image)

        async def feed():
            chunk = FRAME * 25  # 2 s at a time, as a client would stream it
            for i in range(0, samples.size, chunk):
                await s.send_audio(samples[i:i + chunk])
                if args.realtime:
                    await asyncio.sleep(chunk / RATE)
            await s.end_input()

        def take(ev) -> None:
            if isinstance(ev, AudioOut) and ev.frame < total:
                out[ev.frame * FRAME:(ev.frame + 1) * FRAME] = ev.pcm
            elif isinstance(ev, TextToken) and ev.frame < total:
                tokens.append(ev)
            elif isinstance(ev, Transcript):
                utterances.append(ev)
            elif isinstance(ev, Error):
                errors.append(f"{ev.kind}: {ev.message}")

        feeder = asyncio.create_task(feed())
        try:
            async for ev in s.events(timeout=60):
                take(ev)
                progress(s.frames_out)
                if s.frames_out >= total:
                    break
        finally:
            feeder.cancel()
        await s.close()
        async for ev in s.events(timeout=5):  # the last frame's remaining events and the final transcript
            take(ev)
    if errors:
        from agent.errors import UserFacingError

        raise UserFacingError("the run reported errors:\n  " + "\n  ".join(errors[:5]))
    return out, tokens, utterances


def _run(args) -> int:
    from tqdm import tqdm

    from agent.audio import AudioError, load_audio, write_wav
    from agent.errors import UserFacingError

    if args.tail < 0:
        raise UserFacingError("--tail must be >= 0 seconds")
    try:
        audio = load_audio(args.input)
    except AudioError as exc:
        raise UserFacingError(str(exc)) from exc
    for note in audio.notes:
        print(f"note: {note}")
    samples = np.concatenate([audio.samples, np.zeros(int(args.tail * RATE), np.float32)])
    total = math.ceil(samples.size / FRAME)
    bar = tqdm(total=total, unit="frame", desc="duplex run", disable=args.quiet)

    def progress(n: int) -> None:
        bar.update(n - bar.n)

    try:
        out, tokens, utterances = asyncio.run(_simulate(args, samples, progress))
    finally:
        bar.close()
    write_wav(args.output, out)
    print(f"wrote {args.output}: {out.size / RATE:.2f} s of the model's audio")
    text = "".join(t.text for t in tokens).strip()
    if args.text:
        lines = [f"[{_format_time(u.start)} - {_format_time(u.end)}] {u.text}" for u in utterances]
        lines += ["", "# token stream: time (s), text piece"]
        lines += [f"{t.time:7.2f}\t{t.text!r}" for t in tokens]
        Path(args.text).parent.mkdir(parents=True, exist_ok=True)
        Path(args.text).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.text}: {len(utterances)} utterance(s), {len(tokens)} text tokens")
    print(f"model text: {text[:200] or '(none)'}")
    return 0
