"""`duplex bench codec`: per-frame streaming encode+decode, ours vs the reference moshi package."""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from benchmarks.reference import import_reference, reference_mimi
from benchmarks.timing import device_name, summary


def run_codec_bench(args) -> int:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from models.codec import Codec, CodecConfig, load_mimi_state_dict

    tiny = args.config == "tiny"
    cfg = CodecConfig.tiny(4) if tiny else CodecConfig.mimi(8)
    loaders = None if args.no_reference else import_reference()
    ours = Codec(cfg).eval()
    ref = None
    if loaders is not None:
        ref = reference_mimi(loaders, tiny, cfg.num_codebooks)
        load_mimi_state_dict(ours, ref.state_dict(), "reference Mimi")
    frame = cfg.frame_size
    wav = torch.randn(1, 1, frame * (args.frames + 3)) * 0.1
    print(f"device: {device_name()}  config: {args.config}  frames: {args.frames}")

    # Ours and the reference alternate frame by frame so machine-load drift hits both equally.
    results: dict[str, list[float]] = {"ours": []}
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        state = ours.init_state(1)
        if ref is not None:
            stack.enter_context(ref.streaming(1))
            results["reference moshi==0.2.13"] = []
        for i in range(args.frames + 3):
            chunk = wav[..., i * frame:(i + 1) * frame]
            t0 = time.perf_counter()
            ours.decode_step(ours.encode_step(chunk, state), state)
            t1 = time.perf_counter()
            if ref is not None:
                ref.decode(ref.encode(chunk))
            t2 = time.perf_counter()
            if i >= 3:
                results["ours"].append((t1 - t0) * 1e3)
                if ref is not None:
                    results["reference moshi==0.2.13"].append((t2 - t1) * 1e3)
    for name, ms in results.items():
        print(f"{name:26s} encode+decode per 80 ms frame: {summary(ms)}  RTF {statistics.median(ms) / 80:.3f}")
    if len(results) == 2:
        ratio = statistics.median(results["reference moshi==0.2.13"]) / statistics.median(results["ours"])
        print(f"speed-up vs reference (median): {ratio:.2f}x")
    else:
        print("reference package not installed: no ratio (pip install --no-deps moshi==0.2.13)")
    return 0
