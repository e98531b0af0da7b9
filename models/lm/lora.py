"""Low-rank adapters (LoRA) on the LM's weight matrices, as parametrizations.

W_eff = W + scale * B @ A with A [rank, in] random and B [out, rank] zero at the start, so a fresh adapter
leaves every output exactly as the base model's. Each adapter is a `torch.nn.utils.parametrize` parametrization
of the weight *tensor* (not a wrapper module): every code path that reads `module.weight` or a raw fused
projection such as `self_attn.in_proj_weight` (the CPU path, the fused GPU path, the depformer's per-step views)
sees the adapted weight without knowing adapters exist. `merge_lora` folds them back into plain tensors, so a
merged model has the base model's exact key layout (kyutai's published names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize


@dataclass
class LoRAConfig:
    rank: int = 16
    scale: float = 2.0  # the update is scale * B @ A (moshi-finetune's lora_scaling; alpha / rank elsewhere)
    depformer: bool = False  # also adapt the depformer's matrices (the backbone's always are)


class LoRADelta(nn.Module):
    """The parametrization: weight -> weight + scale * B @ A."""

    def __init__(self, out_features: int, in_features: int, rank: int, scale: float,
                 device=None, dtype=None):
        super().__init__()
        self.scale = scale
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        return self.scale * (self.lora_B @ self.lora_A)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)


def target_weights(model: nn.Module, depformer: bool = False) -> list[tuple[str, nn.Module, str]]:
    """(qualified name, owning module, attribute) of each 2-D matrix LoRA adapts: every linear map of the backbone's
    blocks (attention q|k|v and output, Mamba2 in/out projections, MLPs; not the image cross-attention, which
    a vision fine-tune trains in full), and with `depformer` also the depformer's layers."""
    prefixes = ["transformer.layers."] + (["depformer.layers."] if depformer else [])
    out = []
    for mod_name, module in model.named_modules():
        if not any(mod_name.startswith(p) for p in prefixes) or "cross_attention" in mod_name:
            continue
        for attr, p in module.named_parameters(recurse=False):
            if p.dim() == 2 and (attr == "weight" and isinstance(module, nn.Linear) or attr == "in_proj_weight"):
                out.append((f"{mod_name}.{attr}", module, attr))
    return out


def add_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Freeze every base parameter and attach a fresh adapter to each target matrix; returns their names."""
    if cfg.rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {cfg.rank}")
    for p in model.parameters():
        p.requires_grad_(False)
    names = []
    for name, module, attr in target_weights(model, cfg.depformer):
        w = getattr(module, attr)
        parametrize.register_parametrization(
            module, attr, LoRADelta(w.shape[0], w.shape[1], cfg.rank, cfg.scale, w.device, w.dtype))
        names.append(name)
    if not names:
        raise ValueError("the model has no matrices LoRA can adapt (no backbone layers)")
    return names


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRADelta) for m in model.modules())


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LoRADelta) for p in (m.lora_A, m.lora_B)]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters, keyed `<base weight name>.lora_A|lora_B` (what an adapter file holds)."""
    out = {}
    for mod_name, module in model.named_modules():
        plist = getattr(module, "parametrizations", None)
        if plist is None:
            continue
        for attr, chain in plist.items():
            for delta in chain:
                if isinstance(delta, LoRADelta):
                    out[f"{mod_name}.{attr}.lora_A"] = delta.lora_A.detach()
                    out[f"{mod_name}.{attr}.lora_B"] = delta.lora_B.detach()
    return out


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (in place) and unfreeze; the model is a plain one again."""
    for module in list(model.modules()):
        plist = getattr(module, "parametrizations", None)
        if plist is None:
            continue
        for attr in list(plist.keys()):
            parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@torch.no_grad()
def apply_adapter(model: nn.Module, adapter: dict[str, torch.Tensor], scale: float) -> list[str]:
    """Merge an adapter file's `lora_A`/`lora_B` pairs into a plain model's weights; returns the names merged."""
    params = dict(model.named_parameters())
    merged = []
    for key in sorted(k for k in adapter if k.endswith(".lora_A")):
        base = key[: -len(".lora_A")]
        if base not in params or f"{base}.lora_B" not in adapter:
            raise KeyError(f"adapter entry {key} has no matching weight {base} (or lora_B) in the model")
        b = adapter[f"{base}.lora_B"]
        w = params[base]
        w.add_((scale * (b.float() @ adapter[key].float())).to(w.dtype))
        merged.append(base)
    return merged
