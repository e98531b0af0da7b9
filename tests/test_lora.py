"""LoRA on a tiny random model in kyutai's published layout: exact at zero, only adapters train, merge == base +
adapter, an adapter folder merges into its base at load; activation checkpointing leaves the gradients as they were."""

from __future__ import annotations

import random

import pytest
import torch

from agent.training.lm_train import Batcher, lm_loss
from models.lm import LMConfig, LMModel, load_lm, save_lm
from models.lm.lora import LoRAConfig, adapter_state_dict, add_lora, apply_adapter, lora_parameters, merge_lora


def tiny_moshi_layout(tmp_path, pattern: str = "A") -> LMModel:
    """A random all-attention (or hybrid) model saved and reloaded through the published key layout."""
    torch.manual_seed(0)
    cfg = LMConfig(dim=32, num_heads=2, num_layers=2, pattern=pattern, context=16, text_card=40, card=24, n_q=4,
                   dep_q=2, delays=[0, 0, 1, 0, 1], depformer_dim=16, depformer_dim_feedforward=32,
                   depformer_num_heads=2, depformer_num_layers=1)
    path = tmp_path / "model.safetensors"
    save_lm(LMModel(cfg), path)
    return load_lm(path, dtype=torch.float32)


def random_batch(cfg, B: int = 3, T: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, cfg.card, (B, 1 + cfg.n_q, T), generator=g)
    inputs[:, 0] = torch.randint(0, cfg.text_card, (B, T), generator=g)
    targets = torch.randint(0, cfg.card, (B, 1 + cfg.dep_q, T), generator=g)
    targets[:, 0] = torch.randint(0, cfg.text_card, (B, T), generator=g)
    return inputs, targets


def logits(model, inputs):
    state = model.init_state(inputs.shape[0], chunk=inputs.shape[-1])
    with torch.no_grad():
        hidden, text = model.forward_text(inputs, state)
    return hidden, text


@pytest.mark.parametrize("pattern", ["A", "MA"])
def test_zero_initialised_adapters_leave_outputs_exactly_equal(tmp_path, pattern):
    model = tiny_moshi_layout(tmp_path, pattern)
    inputs, _ = random_batch(model.cfg)
    base_hidden, base_text = logits(model, inputs)
    names = add_lora(model, LoRAConfig(rank=4, scale=2.0, depformer=True))
    assert any("self_attn.in_proj_weight" in n for n in names) and any("depformer" in n for n in names)
    hidden, text = logits(model, inputs)
    assert torch.equal(hidden, base_hidden) and torch.equal(text, base_text)


@torch.enable_grad()
def test_training_changes_only_adapters_and_the_merge_equals_base_plus_adapter(tmp_path):
    model = tiny_moshi_layout(tmp_path)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, LoRAConfig(rank=4, scale=2.0))
    params = lora_parameters(model)
    assert all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs, targets = random_batch(model.cfg)
    first = None
    for _ in range(6):
        loss, _ = lm_loss(model, inputs, targets, [None] * inputs.shape[0])
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first  # the adapters learned something
    # only adapters changed: every base tensor is bit-identical under its parametrized name
    for k, v in model.state_dict().items():
        if "lora_" in k:
            continue
        plain = k.replace(".parametrizations.", ".").replace(".original", "")
        assert torch.equal(v, base[plain]), k
    assert any(float(p.abs().max()) > 0 for n, p in model.named_parameters() if n.endswith("lora_B"))
    inputs2, _ = random_batch(model.cfg, seed=1)
    _, with_adapter = logits(model, inputs2)
    adapter = adapter_state_dict(model)
    merged = merge_lora(model)
    assert set(merged.state_dict()) == set(base)  # the published layout again
    _, after_merge = logits(merged, inputs2)
    torch.testing.assert_close(after_merge, with_adapter, atol=1e-5, rtol=0)
    # an adapter file merged into a freshly loaded base model gives the same logits
    fresh = load_lm(tmp_path / "model.safetensors", dtype=torch.float32)
    assert len(apply_adapter(fresh, adapter, scale=2.0)) == len(adapter) // 2
    _, loaded = logits(fresh, inputs2)
    torch.testing.assert_close(loaded, with_adapter, atol=1e-5, rtol=0)


@torch.enable_grad()
def test_activation_checkpointing_gives_the_same_gradients(tmp_path):
    model = tiny_moshi_layout(tmp_path, "MA").train()
    inputs, targets = random_batch(model.cfg)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.checkpoint_layers = ckpt
        loss, _ = lm_loss(model, inputs, targets, [None] * inputs.shape[0])
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5)


def test_batch_rows_slice_the_global_batch():
    from agent.training.lm_data import Example

    cfg = LMConfig(dim=32, num_heads=2, num_layers=1, pattern="A", context=16, text_card=40, card=24, n_q=4, dep_q=2,
                   delays=[0, 0, 1, 0, 1], depformer_dim=16, depformer_num_heads=2, depformer_num_layers=1)
    exs = [Example(user=torch.full((2, 20), i, dtype=torch.int16), agent=torch.full((2, 20), i, dtype=torch.int16),
                   text=torch.full((20,), 3), image=None, meta={"kind": "add"}) for i in range(6)]
    batch = Batcher(exs, cfg, torch.zeros(2, dtype=torch.long), 9, random.Random(0)).batch(4)
    first, second = Batcher.rows(batch, slice(0, 2)), Batcher.rows(batch, slice(2, 4))
    assert torch.equal(torch.cat([first[0], second[0]]), batch[0])
    assert torch.equal(torch.cat([first[1], second[1]]), batch[1])


def test_lora_step_figures_run_on_a_tiny_config():
    """`duplex bench train --moshi-7b`'s step (CUDA only) on a tiny config, so that its code is exercised here."""
    from benchmarks.training import lora_step_figures

    r = lora_step_figures(LMConfig.tiny("MA"), torch.device("cpu"), torch.float32, frames=8, rank=2, steps=2)
    assert r["tokens_per_s"] > 0 and r["adapter_params_m"] > 0
