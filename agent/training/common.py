"""Shared training plumbing: device choice, seeded RNG, atomic checkpoints with resume."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch


def add_loop_args(p, run: str, batch: int, lr: float, save_every: int, steps: int = 3000) -> None:
    """Arguments every training command shares."""
    p.add_argument("--data", default="data/synth/train",
                   help="dialogue shards from `duplex data synth` (several folders: comma-separated)")
    # --run-dir: under torchrun a plain `--run` is taken for torchrun's own --run-path (an ambiguous prefix)
    p.add_argument("--run", "--run-dir", dest="run", default=run,
                   help="checkpoint folder (training resumes from it when it has one); spell it --run-dir "
                        "under torchrun")
    p.add_argument("--steps", type=int, default=steps, help=f"total optimizer steps (default {steps})")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=save_every, help="steps between checkpoints")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (a GPU when present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def data_folders(spec: str) -> list[Path]:
    """`--data a,b` -> [Path(a), Path(b)]."""
    return [Path(p) for p in spec.split(",") if p]


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(step: int, warm: int, total: int) -> float:
    """LR factor: linear warm-up over `warm` steps, then a cosine from 1 down to 0.1 at `total`."""
    if step < warm:
        return (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def optimizer_step(loss: torch.Tensor, opt, sched, params, max_norm: float = 1.0) -> None:
    """One update: backward, clip the gradient norm, step the optimizer and the schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    sched.step()


def save_checkpoint(path: Path, **state) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interrupted save never corrupts the last good checkpoint


def load_checkpoint(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def append_log(path: Path, **fields) -> None:
    """One JSON line of a run's log (RUN/log.jsonl): a step's figures, or a run's summary."""
    import json

    with path.open("a") as f:
        f.write(json.dumps(fields) + "\n")
