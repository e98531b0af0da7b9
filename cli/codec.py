"""`duplex codec encode|decode` and `duplex bench codec`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"


def add_commands(sub: argparse._SubParsersAction) -> None:
    codec = sub.add_parser("codec", help="encode audio to codec codes and back")
    csub = codec.add_subparsers(dest="codec_command", metavar="ACTION")
    enc = csub.add_parser("encode", help="audio file -> .codes file",
                          description="Encode an audio file (any rate/channels; converted to 24 kHz mono).")
    enc.add_argument("input", help="input audio file (wav, flac, ogg, mp3, ...)")
    enc.add_argument("output", help="output .codes file")
    dec = csub.add_parser("decode", help=".codes file -> 24 kHz WAV")
    dec.add_argument("input", help="input .codes file written by `duplex codec encode`")
    dec.add_argument("output", help="output WAV file")
    for p in (enc, dec):
        p.add_argument("--weights", required=True,
                       help=f"codec weights: a Mimi-layout safetensors file or a folder holding {MIMI_FILE}")
        p.add_argument("--num-codebooks", type=int, default=None, help="codebooks to use (Mimi: 1..32, default 8)")
        p.add_argument("--device", default="cpu")
    enc.set_defaults(handler=_encode)
    dec.set_defaults(handler=_decode)
    codec.set_defaults(handler=lambda args: codec.print_help() or 2)


def resolve_weights(spec: str) -> Path:
    from agent.errors import UserFacingError

    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / MIMI_FILE
    if not path.is_file():
        raise UserFacingError(f"codec weights not found: {path}\n  Download kyutai's Mimi once with e.g. "
                              f"`huggingface-cli download kyutai/moshiko-pytorch-bf16 {MIMI_FILE} --local-dir DIR` "
                              "and pass --weights DIR.")
    return path


def _load(args):
    import torch

    from agent.errors import UserFacingError
    from models.checkpoint import CheckpointError
    from models.codec import load_codec

    try:
        codec = load_codec(resolve_weights(args.weights), device=args.device, num_codebooks=args.num_codebooks)
    except (CheckpointError, ValueError) as exc:
        raise UserFacingError(str(exc)) from exc
    torch.set_grad_enabled(False)
    return codec


def _encode(args) -> int:
    import torch

    from agent.audio import AudioError, load_audio
    from agent.codes_file import CodesFile
    from agent.errors import UserFacingError

    try:
        audio = load_audio(args.input)
    except AudioError as exc:
        raise UserFacingError(str(exc)) from exc
    for note in audio.notes:
        print(f"note: {note}", file=sys.stderr)
    codec = _load(args)
    wav = torch.from_numpy(audio.samples)[None, None].to(args.device)
    codes = _chunked(lambda st, x: codec.encode_step(x, st), codec, wav, codec.frame_size, "encode")
    CodesFile(codes[0].cpu(), audio.samples.size, codec.sample_rate, codec.cfg.frame_rate,
              str(Path(args.weights).name)).save(args.output)
    print(f"wrote {args.output}: {codes.shape[1]} codebooks x {codes.shape[2]} frames "
          f"({audio.samples.size / codec.sample_rate:.2f} s)")
    return 0


def _decode(args) -> int:
    from agent.audio import write_wav
    from agent.codes_file import CodesFile, CodesFileError
    from agent.errors import UserFacingError

    try:
        cf = CodesFile.load(args.input)
    except CodesFileError as exc:
        raise UserFacingError(str(exc)) from exc
    codec = _load(args)
    codes = cf.codes[None].to(args.device)
    if codes.numel() == 0:
        raise UserFacingError(f"{args.input} holds no frames")
    try:
        codec.validate_codes(codes)
    except ValueError as exc:
        raise UserFacingError(str(exc)) from exc
    wav = _chunked(lambda st, x: codec.decode_step(x, st), codec, codes, 1, "decode")
    samples = wav[0, 0, : cf.num_samples].cpu().numpy()
    write_wav(args.output, samples, codec.sample_rate)
    print(f"wrote {args.output}: {samples.size / codec.sample_rate:.2f} s at {codec.sample_rate} Hz")
    return 0


def _chunked(step, codec, x, unit: int, label: str):
    """Stream `x` through `step` in 10-second pieces with a progress bar (same result as one call)."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    pad = (-x.shape[-1]) % unit
    if pad:
        x = F.pad(x, (0, pad))
    piece = 125 * unit  # 10 s of frames
    state = codec.init_state(x.shape[0], chunk=64)
    outs = []
    total = x.shape[-1]
    with tqdm(total=total // unit, unit="frame", desc=label, disable=total <= piece, file=sys.stderr) as bar:
        for start in range(0, total, piece):
            outs.append(step(state, x[..., start:start + piece]))
            bar.update(min(piece, total - start) // unit)
    return torch.cat(outs, dim=-1)
