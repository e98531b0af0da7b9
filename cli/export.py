"""`duplex export onnx`: a model's frame step as ONNX graphs for `--backend onnx`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser("export", help="export a model for another runtime")
    esub = exp.add_subparsers(dest="export_target", metavar="FORMAT")
    p = esub.add_parser("onnx", help="the frame step (codec encode, LM, codec decode, image) as ONNX graphs",
                        description="Each graph takes its streaming state as explicit inputs and returns the "
                                    "tensors it writes, with a dynamic batch axis, so one export serves every "
                                    "batch size. Use it with --backend onnx --onnx-dir FOLDER (or write it to "
                                    "MODEL_FOLDER/onnx, where --backend onnx finds it by itself).")
    p.add_argument("model", help="a registered model name, `default`, or a model folder")
    p.add_argument("--out", required=True, help="folder for the graphs and onnx.json")
    p.add_argument("--quantize", choices=["int8"], help="int8 dynamic quantisation of the LM's matrix products")
    p.set_defaults(handler=_onnx)
    exp.set_defaults(handler=lambda args: exp.print_help() or 2)


def _onnx(args) -> int:
    import time

    from agent.bundle import load_bundle
    from agent.errors import UserFacingError
    from agent.onnx_backend import OnnxUnavailableError, export_bundle_graphs
    from agent.registry import resolve

    bundle = load_bundle(resolve(args.model), device="cpu")
    t0 = time.time()
    try:
        manifest = export_bundle_graphs(bundle, Path(args.out), quantize=args.quantize)
    except OnnxUnavailableError as exc:
        raise UserFacingError(str(exc)) from exc
    graphs = ", ".join(manifest["graphs"])
    print(f"exported {bundle.name} ({graphs}; opset {manifest['opset']}"
          + (f", {args.quantize}" if args.quantize else "") + f") to {args.out} in {time.time() - t0:.0f} s")
    return 0
