"""`duplex convert hybrid`: turn a pretrained attention model into a Mamba2 hybrid (then distil it)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    conv = sub.add_parser("convert", help="convert a model (attention layers -> Mamba2 mixers)")
    csub = conv.add_subparsers(dest="convert_target", metavar="TARGET")
    p = csub.add_parser("hybrid", help="replace attention layers by Mamba2 mixers initialised from their weights",
                        description="Every M in --pattern replaces that layer's attention by a Mamba2 mixer whose "
                                    "x, B, C projections are the attention's v, k, q and whose output projection "
                                    "is kept (docs/architecture.md); all other weights are kept. The result is a "
                                    "model folder that duplex run/serve/bench load; distil it from the source "
                                    "next to recover what the conversion loses.")
    p.add_argument("source", help="a registered model name, `default`, or a folder (e.g. a kyutai Moshi release)")
    p.add_argument("--pattern", required=True,
                   help="A (keep attention) / M (convert) per layer, repeated to the layer count, e.g. MMA")
    p.add_argument("--out", required=True, help="folder to write the converted model to")
    p.add_argument("--seed", type=int, default=0, help="seed of the freshly initialised parts (gates, dt, A)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out folder")
    p.set_defaults(handler=_hybrid)
    conv.set_defaults(handler=lambda args: conv.print_help() or 2)


def _hybrid(args) -> int:
    from agent.bundle import MANIFEST, write_manifest
    from agent.errors import UserFacingError
    from agent.registry import resolve
    from models.lm import load_lm
    from models.lm.checkpoint import save_lm
    from models.lm.hybrid_convert import ConversionError, convert_to_hybrid, state_bytes_per_session

    files = resolve(args.source)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UserFacingError(f"{out} is not empty (use --force to overwrite)")
    if out.resolve() == files.folder.resolve():
        raise UserFacingError("--out must be another folder than the source")
    print(f"loading {files.name} ({files.folder})")
    lm = load_lm(files.lm, cfg=files.lm_config)  # in the file's own dtype: a 7B model stays bf16
    before = lm.cfg
    try:
        lm = convert_to_hybrid(lm, args.pattern, seed=args.seed)
    except ConversionError as exc:
        raise UserFacingError(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    save_lm(lm, out / "lm.safetensors")
    codec_name = "codec.safetensors"
    shutil.copyfile(files.codec, out / codec_name)
    tokenizer = None
    if files.tokenizer:
        tokenizer = files.tokenizer.name
        shutil.copyfile(files.tokenizer, out / tokenizer)
    write_manifest(out, f"{files.name} converted to a Mamba2 hybrid (pattern {lm.cfg.layer_kinds}); distil it "
                        "before use", False, tokenizer, files.sampling or None,
                   input_noise_floor=files.input_noise_floor or None)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["converted_from"] = {"source": str(files.folder), "pattern": lm.cfg.layer_kinds, "seed": args.seed}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    a, b = state_bytes_per_session(before), state_bytes_per_session(lm.cfg)
    print(f"wrote {out}: layers {before.layer_kinds} -> {lm.cfg.layer_kinds}")
    print(f"backbone streaming state per session at {before.context} frames: {a / 2**20:.1f} MiB -> "
          f"{b / 2**20:.1f} MiB ({a / max(b, 1):.1f}x less)")
    print("next: distil it from the source (the converted layers start from the attention's projections, "
          "not from its behaviour)")
    return 0
