"""Loading weights from local safetensors files with errors that say exactly what is wrong."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint does not match the model: lists missing/unexpected keys and shape mismatches."""


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        from safetensors.torch import load_file
    except ImportError as exc:  # pragma: no cover - safetensors is a hard dependency
        raise CheckpointError("safetensors is required to read checkpoints: pip install safetensors") from exc
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The file's string metadata ({} when absent or unreadable; read_safetensors reports bad files)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # noqa: BLE001
        return {}


def _summarise(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load `state` into `module`, casting dtypes; raise CheckpointError on any mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the model configuration:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_summarise(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_summarise(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {_summarise(mismatched, 6)}")
        lines.append("  Check that the file and the config (e.g. Mimi vs tiny, Moshi 7B vs custom) belong together.")
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key].to(tensor.dtype))
