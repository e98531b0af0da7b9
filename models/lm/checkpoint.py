"""Loading kyutai's Moshi `model.safetensors` layout (and the reference's split names) into LMModel."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch

from models.checkpoint import load_checked, read_safetensors, safetensors_metadata
from models.lm.config import LMConfig, MambaConfig, VisionAdapterConfig
from models.lm.model import LMModel

_SPLIT = re.compile(r"^(.*self_attn)\.(in_projs|out_projs)\.(\d+)\.weight$")


def convert_moshi_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fuse split per-step projections (`in_projs.{k}`) into the published step-major fused tensors."""
    out: dict[str, torch.Tensor] = {}
    split: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, value in raw.items():
        m = _SPLIT.match(key)
        if m:
            split.setdefault((m.group(1), m.group(2)), {})[int(m.group(3))] = value
        else:
            out[key] = value
    for (prefix, kind), parts in split.items():
        fused = torch.cat([parts[i] for i in sorted(parts)], dim=0)
        out[f"{prefix}.{'in_proj_weight' if kind == 'in_projs' else 'out_proj.weight'}"] = fused
    return out


_SHARED_XA = re.compile(r"^transformer\.layers\.(\d+)\.cross_attention\.mha\.(.+)$")


def fill_shared_cross_attention(model: LMModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MoshiVis shares one cross-attention projection across layers; files may store it under one layer only."""
    shared = {m.group(2): v for k, v in state.items() if (m := _SHARED_XA.match(k))}
    if not shared:
        return state
    out = dict(state)
    for key in model.state_dict():
        m = _SHARED_XA.match(key)
        if m and key not in out and m.group(2) in shared:
            out[key] = shared[m.group(2)]
    return out


def load_lm_state_dict(model: LMModel, raw: dict[str, torch.Tensor], source: str = "Moshi checkpoint") -> LMModel:
    load_checked(model, fill_shared_cross_attention(model, convert_moshi_state_dict(raw)), source)
    return model


def lm_config_to_json(cfg: LMConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg))


def lm_config_from_json(text: str) -> LMConfig:
    data = json.loads(text)
    data["mamba"] = MambaConfig(**data["mamba"])
    if data.get("vision"):
        data["vision"] = VisionAdapterConfig(**data["vision"])
    return LMConfig(**data)


def save_lm(model: LMModel, path: str | Path) -> None:
    """Save in the published Moshi key layout, with our config in the file's metadata."""
    from safetensors.torch import save_file

    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}  # clone: shared tensors
    save_file(sd, str(path), metadata={"lm_config": lm_config_to_json(model.cfg)})


def load_lm(path: str | Path, cfg: LMConfig | None = None, device: str | torch.device = "cpu",
            dtype: torch.dtype | None = None) -> LMModel:
    """Build an LM on `device` and load a local Moshi-layout safetensors file.

    The config comes from `cfg`, else from the file's metadata (files we save carry it), else Moshi 7B's.
    """
    raw = read_safetensors(path)
    if cfg is None:
        meta = safetensors_metadata(path)
        cfg = lm_config_from_json(meta["lm_config"]) if "lm_config" in meta else LMConfig.moshi_7b()
    with torch.device("meta"):
        model = LMModel(cfg)
    dtype = dtype or next(iter(raw.values())).dtype
    model = model.to_empty(device=device).to(dtype)
    load_lm_state_dict(model, raw, str(path))
    return model.eval()
