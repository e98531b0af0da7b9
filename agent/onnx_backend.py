"""Where a model's ONNX graphs come from for `backend="onnx"`: `AgentConfig.onnx_dir`, the model folder's own
`onnx/` (written by `duplex export onnx MODEL --out MODEL_FOLDER/onnx`), or a per-user cache filled by an export
on first use (about a minute for the default model on 2 cores; printed once)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from agent.bundle import ModelBundle
from agent.config import AgentConfig
from agent.errors import DuplexError


class OnnxUnavailableError(DuplexError):
    """The ONNX backend cannot be used as asked (missing runtime, graphs of other weights, unsupported opset)."""


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "duplex" / "onnx"


def export_bundle_graphs(bundle: ModelBundle, out: Path, quantize: str | None = None, log=print) -> dict:
    """Export `bundle`'s frame step into `out` (needs the `onnx` extra: onnx and onnxscript for the export)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise OnnxUnavailableError("exporting ONNX graphs needs onnx and onnxscript: "
                                   "pip install 'duplex-agent[onnx]'") from exc
    from models.lm import LMGenerator
    from models.onnx_graphs import export_graphs

    if bundle.lm.device.type != "cpu" or bundle.codec.device.type != "cpu":
        raise OnnxUnavailableError("export from a model loaded on the CPU (--device cpu)")
    tmp = out.with_name(out.name + ".partial")
    manifest = export_graphs(bundle.codec, LMGenerator(bundle.lm, bundle.sampling), tmp, quantize=quantize, log=log)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.replace(out)  # a half-written export is never taken for a finished one
    return manifest


def onnx_pool(bundle: ModelBundle, config: AgentConfig):
    """The slot pool for `backend="onnx"`, exporting the graphs first when no folder holds them."""
    from models.onnx_graphs import MANIFEST, code_fingerprint, step_fingerprint
    from streaming.onnx_pool import OnnxBackendError, OnnxSlotPool, import_onnxruntime

    try:
        import_onnxruntime()
    except OnnxBackendError as exc:
        raise OnnxUnavailableError(str(exc)) from exc
    if bundle.lm.device.type != "cpu":
        raise OnnxUnavailableError("the ONNX backend runs from a CPU-loaded model (it picks ONNX Runtime's CUDA "
                                   "provider by itself where onnxruntime-gpu is installed): use --device cpu")

    def print_(*a) -> None:
        print(*a, file=sys.stderr)

    fp = step_fingerprint(bundle.codec, bundle.lm, bundle.sampling)
    if config.onnx_dir:
        folder = Path(config.onnx_dir).expanduser()
        if not (folder / MANIFEST).is_file():
            raise OnnxUnavailableError(f"{folder} holds no exported graphs: run `duplex export onnx "
                                       f"{bundle.name} --out {folder}`")
    else:
        q = config.onnx_quantize
        own = bundle.files.folder / ("onnx" + (f"-{q}" if q else ""))
        # the cache is keyed by the weights, config and sampling, and by the code that traced them
        key = fp[:16] + "-" + code_fingerprint()[:8] + (f"-{q}" if q else "")
        folder = own if (own / MANIFEST).is_file() else cache_dir() / key
        if not (folder / MANIFEST).is_file():
            print_(f"exporting {bundle.name}'s frame step to ONNX{f' ({q})' if q else ''} (first use; cached in "
                   f"{folder}) ...")
            export_bundle_graphs(bundle, folder, quantize=q, log=lambda m: print_(f"  {m}"))
    try:
        return OnnxSlotPool(folder, config.max_sessions, bundle.files.input_noise_floor, fingerprint=fp,
                            threads=config.threads)
    except OnnxBackendError as exc:
        raise OnnxUnavailableError(str(exc)) from exc
