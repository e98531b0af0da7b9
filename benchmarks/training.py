"""`duplex bench train`: training throughput and memory per rank, one process vs torchrun processes (gloo on a
CPU, NCCL on GPUs), DDP vs FSDP2, measured in one run on the same data and global batch; and with CUDA, a
LoRA step of a Moshi-7B-shaped model at batch 1 (tokens/s, peak memory)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.launch import cli_command

ROOT = Path(__file__).resolve().parents[1]


def _train(data: Path, run: Path, procs: int, threads: int, args, *extra: str) -> dict:
    weights = ROOT / "agent" / "weights" / "default"
    cmd_args = ["train", "lm", "--data", str(data), "--codec", str(weights / "codec.safetensors"), "--run-dir",
                str(run), "--init", str(weights / "lm.safetensors"), "--steps", str(args.steps), "--batch",
                str(args.batch), "--frames", str(args.frames), "--save-every", str(10**9), "--threads", str(threads),
                *(["--lora", str(args.lora)] if args.lora else []), *extra]
    cmd = cli_command(cmd_args, procs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed:\n{proc.stderr[-3000:]}")
    entries = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [e for e in entries if not e.get("summary")][2:]  # the first steps warm up allocators and caches
    summary = [e for e in entries if e.get("summary")][-1]
    return {"frames_per_s": statistics.median(e["frames_per_s"] for e in steps), "ranks": summary["ranks"],
            "mode": summary["mode"]}


def run_training_bench(args) -> int:
    if args.moshi_7b:
        return _moshi_7b_lora(args)
    if args.batch % args.procs:
        print(f"--batch {args.batch} must be a multiple of --procs {args.procs}", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "cli", "data", "synth", "--out", str(data), "--count",
                        str(args.dialogues), "--seed", "11"], cwd=ROOT, check=True, capture_output=True)
        per_rank = max(1, cores // args.procs)
        configs = [(f"1 process, {cores} threads (baseline)", 1, cores, ()),
                   (f"{args.procs} processes DDP, {per_rank} thread(s) each", args.procs, per_rank, ()),
                   (f"{args.procs} processes FSDP, {per_rank} thread(s) each", args.procs, per_rank, ("--fsdp",))]
        results = {}
        for i, (name, procs, threads, extra) in enumerate(configs):
            t0 = time.perf_counter()
            results[name] = _train(data, Path(tmp) / f"run{i}", procs, threads, args, *extra)
            print(f"  measured {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    base = results[configs[0][0]]
    what = f"LoRA rank {args.lora}" if args.lora else "full training"
    print(f"duplex bench train: default LM (11.4M), {what}, global batch {args.batch} x {args.frames} frames, "
          f"{args.steps} steps ({args.steps - 2} timed), {cores} CPU cores")
    print(f"{'configuration':44s} {'frames/s':>9s} {'vs baseline':>11s} {'state/rank':>11s} {'peak RSS/rank':>14s}")
    for name, r in results.items():
        state = max(x["state_mb"] for x in r["ranks"])
        rss = max(x["peak_rss_mb"] for x in r["ranks"])
        print(f"{name:44s} {r['frames_per_s']:9.0f} {r['frames_per_s'] / base['frames_per_s']:10.2f}x "
              f"{state:8.0f} MB {rss:11.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"cores": cores, "batch": args.batch, "frames": args.frames,
                                               "lora": args.lora, "results": results}, indent=2) + "\n")
    return 0


def lora_step_figures(cfg, device, dtype, frames: int = 100, rank: int = 128, steps: int = 3) -> dict:
    """Time and peak memory of LoRA training steps at batch 1 on random tokens (the adapters and the aux-free
    loss of `train lm`); returns tokens/s counted as frames x (1 + n_q) streams."""
    import torch

    from agent.training.lm_train import lm_loss
    from models.lm import LMModel
    from models.lm.lora import LoRAConfig, add_lora, lora_parameters

    with torch.device("meta"):
        model = LMModel(cfg)
    model = model.to_empty(device=device).to(dtype)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.ones_(p)
    add_lora(model, LoRAConfig(rank=rank))
    model.checkpoint_layers = True
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-5)
    g = torch.Generator(device="cpu").manual_seed(0)
    inputs = torch.randint(0, cfg.card, (1, 1 + cfg.n_q, frames), generator=g).to(device)
    targets = torch.randint(0, cfg.card, (1, 1 + cfg.dep_q, frames), generator=g).to(device)
    inputs[:, 0] = inputs[:, 0] % cfg.text_card
    targets[:, 0] = targets[:, 0] % cfg.text_card
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.enable_grad():
            loss, _ = lm_loss(model, inputs, targets, [None])
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times[1:] if len(times) > 1 else times)
    out = {"step_s": step, "tokens_per_s": frames * (1 + cfg.n_q) / step, "frames_per_s": frames / step,
           "adapter_params_m": sum(p.numel() for p in lora_parameters(model)) / 1e6}
    if device.type == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _moshi_7b_lora(args) -> int:
    import torch

    from models.lm import LMConfig

    if not torch.cuda.is_available():
        print("--moshi-7b needs a CUDA GPU (a 7B model's LoRA step does not fit this machine's budget)",
              file=sys.stderr)
        return 2
    r = lora_step_figures(LMConfig.moshi_7b(), torch.device("cuda"), torch.bfloat16, frames=args.frames,
                          rank=args.lora or 128)
    name = torch.cuda.get_device_name()
    print(f"Moshi-7B-shaped LoRA step (rank {args.lora or 128}, batch 1 x {args.frames} frames, bf16, activation "
          f"checkpointing) on {name}: {r['step_s'] * 1e3:.0f} ms/step, {r['tokens_per_s']:.0f} tokens/s, "
          f"peak {r['peak_mb'] / 1024:.1f} GiB, {r['adapter_params_m']:.1f}M adapter parameters")
    return 0
