"""Converting attention layers into Mamba2 mixers initialised from the attention's own projections."""

import pytest
import torch
import torch.nn.functional as F

from models.lm import LMConfig, LMModel
from models.lm.hybrid_convert import (
    ConversionError,
    attention_to_mamba,
    convert_to_hybrid,
    converted_config,
    mamba_config_for,
    state_bytes_per_session,
)


def _attention_folder(folder, **changes):
    """A model folder with the shipped codec and tokenizer and a seeded all-attention LM of the shipped widths
    (`changes` to its config)."""
    import dataclasses
    import shutil

    from agent.bundle import write_manifest
    from agent.registry import EMBEDDED_DIR, resolve
    from models.lm import load_lm
    from models.lm.checkpoint import save_lm

    shipped = resolve("default")
    cfg = dataclasses.replace(load_lm(shipped.lm).cfg, pattern=None, **changes)
    folder.mkdir()
    torch.manual_seed(0)
    save_lm(LMModel(cfg).eval(), folder / "lm.safetensors")
    shutil.copyfile(EMBEDDED_DIR / "default" / "codec.safetensors", folder / "codec.safetensors")
    shutil.copyfile(shipped.tokenizer, folder / "tokenizer.model")
    write_manifest(folder, "attention-only test model", True, "tokenizer.model")
    return cfg


@pytest.mark.parametrize("kv_heads", [None, 2], ids=["MHA", "GQA"])
def test_without_decay_a_converted_layer_is_the_attentions_linear_attention(kv_heads, monkeypatch):
    """A = 0, dt = 1, identity convolution, no gated norm: the Mamba2 mixer computes causal linear attention
    (feature map SiLU, Mamba2's activation after its convolution) with the attention layer's q, k, v and output
    projections, at every position."""
    from models.kernels import mamba2_ref
    from models.lm.layers import Attention
    from models.lm.mamba2 import Mamba2Mixer

    torch.manual_seed(0)
    cfg = LMConfig.tiny("A")
    cfg.kv_heads = kv_heads
    attn = Attention(cfg.dim, cfg.num_heads, kv_heads).double()
    mixer = Mamba2Mixer(cfg.dim, mamba_config_for(cfg)).double()
    attention_to_mamba(attn, mixer)
    with torch.no_grad():
        mixer.A_log.fill_(-float("inf"))  # A = 0: no decay
        mixer.dt_bias.fill_(torch.log(torch.expm1(torch.tensor(1.0))).item())  # softplus(dt_bias) = 1
    monkeypatch.setattr(mamba2_ref, "gated_rmsnorm_ref", lambda y, z, w, g: y)  # no gate, no norm
    u = torch.randn(2, 12, cfg.dim, dtype=torch.float64)
    got = mixer(u, mixer.init_state(2))

    q, k, v = (F.silu(t) for t in attn.project(u))  # [B, H(kv), T, D], no rotary
    rep = cfg.num_heads // attn.kv_heads
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = (q @ k.transpose(-1, -2)).tril()  # causal, unnormalised
    expected = attn._output(scores @ v, 0)
    assert torch.allclose(got, expected, atol=1e-9), (got - expected).abs().max()


def test_converted_model_keeps_other_weights_saves_reloads_and_streams(tmp_path):
    """A tiny kyutai-layout (all-attention) model: converted, saved in the published layout, reloaded; it
    streams frame by frame exactly as it computes offline."""
    from models.lm import load_lm
    from models.lm.checkpoint import save_lm

    torch.manual_seed(1)
    source = LMModel(LMConfig.tiny(None)).eval()  # num_layers 2, all attention
    before = {k: v.clone() for k, v in source.state_dict().items()}
    model = convert_to_hybrid(source, "MA")
    assert model.cfg.layer_kinds == "MA"
    after = model.state_dict()
    kept = [k for k in before if "layers.0.self_attn" not in k]
    assert all(torch.equal(before[k], after[k]) for k in kept)  # norms, MLPs, layer 1, depformer, embeddings
    mixer = model.transformer.layers[0].mixer
    H, D = model.cfg.num_heads, model.cfg.dim // model.cfg.num_heads
    q, k, v = before["transformer.layers.0.self_attn.in_proj_weight"].split([H * D] * 3)
    w = mixer.in_proj.weight
    assert torch.equal(w[H * D:2 * H * D], v) and torch.equal(w[2 * H * D:3 * H * D], k)
    assert torch.equal(w[3 * H * D:4 * H * D], q)
    assert torch.equal(mixer.out_proj.weight, before["transformer.layers.0.self_attn.out_proj.weight"])

    save_lm(model, tmp_path / "lm.safetensors")
    again = load_lm(tmp_path / "lm.safetensors")
    assert again.cfg.layer_kinds == "MA"
    tokens = torch.randint(0, 60, (2, 1 + model.cfg.n_q, 10))
    with torch.no_grad():
        offline = again.forward_text(tokens, again.init_state(2, chunk=10))[1]
        state = again.init_state(2)
        steps = torch.cat([again.forward_text(tokens[..., t:t + 1], state)[1] for t in range(10)], 1)
    assert torch.allclose(offline, steps, atol=1e-5)


def test_conversion_errors_and_state_per_session():
    cfg = LMConfig.tiny("MA")  # already has Mamba2 layers of its own shape
    with pytest.raises(ConversionError, match="already Mamba2"):
        converted_config(LMConfig.tiny("MA"), "AA")
    with pytest.raises(ConversionError, match="another shape"):
        converted_config(cfg, "MM")
    with pytest.raises(ConversionError, match="made of A"):
        converted_config(LMConfig.tiny(None), "MX")
    moshi = LMConfig.moshi_7b()
    hybrid = converted_config(moshi, "MMA")
    full, small = state_bytes_per_session(moshi), state_bytes_per_session(hybrid)
    assert full == 32 * 2 * 3000 * 4096 * 2  # bf16 keys and values, 3000 frames, 32 layers: ~1.5 GB
    assert full / small > 2.5


def test_convert_cli_writes_a_folder_that_duplex_run_loads(tmp_path, capsys):
    """`duplex convert hybrid` on an all-attention model folder (the shipped codec and tokenizer with an
    attention-only LM of the shipped shape), then `duplex run --model` on the result."""
    import numpy as np

    from agent.audio import write_wav
    from cli.main import main
    from models.lm import load_lm

    src = tmp_path / "attention"
    cfg = _attention_folder(src)

    out = tmp_path / "hybrid"
    assert main(["convert", "hybrid", str(src), "--pattern", "MMA", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MiB ->" in printed and "x less" in printed
    assert load_lm(out / "lm.safetensors").cfg.layer_kinds == "MMA" * (cfg.num_layers // 3)
    assert main(["convert", "hybrid", str(src), "--pattern", "MMA", "--out", str(out)]) == 1  # not empty
    assert "not empty" in capsys.readouterr().err

    write_wav(tmp_path / "in.wav", np.zeros(24000, np.float32))
    assert main(["run", "--model", str(out), "--input", str(tmp_path / "in.wav"), "--output",
                 str(tmp_path / "out.wav"), "--quiet"]) == 0
    assert (tmp_path / "out.wav").is_file()


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="espeak-ng not installed")
@torch.enable_grad()  # conftest runs tests under no_grad
def test_conversion_then_short_distillation_lowers_held_out_kl(tmp_path):
    """`duplex convert hybrid` then `duplex train distill` (a few steps, resumable, exported): the student's KL
    from the teacher on held-out dialogues drops."""
    import random

    from agent.training.distill import distill_loss
    from agent.training.lm_data import load_or_encode
    from agent.training.lm_train import Batcher
    from agent.training.synth import synth_dataset
    from cli.main import main
    from models.codec import load_codec
    from models.lm import load_lm
    from models.lm.tokenizer import TextTokenizer

    teacher = tmp_path / "teacher"
    _attention_folder(teacher, vision=None, num_layers=3)
    synth_dataset(tmp_path / "train", 16, seed=0, vision=False)
    synth_dataset(tmp_path / "held", 8, seed=5, vision=False)
    student = tmp_path / "student"
    assert main(["convert", "hybrid", str(teacher), "--pattern", "MAA", "--out", str(student)]) == 0

    def held_out_kl(folder) -> float:
        t, s = load_lm(teacher / "lm.safetensors").eval(), load_lm(folder / "lm.safetensors").eval()
        codec = load_codec(teacher / "codec.safetensors", num_codebooks=t.cfg.user_streams)
        examples = load_or_encode(tmp_path / "held", tmp_path / "held.pt", codec,
                                  TextTokenizer(teacher / "tokenizer.model"), 64)
        silence = codec.encode(torch.zeros(1, 1, codec.frame_size * 4))[0, :, -1]
        inputs, targets, images, _ = Batcher(examples, t.cfg, silence, 33, random.Random(0)).batch(8)
        with torch.no_grad():
            return float(distill_loss(t, s, inputs, targets, images)[0])

    args = ["train", "distill", "--teacher", str(teacher), "--student", str(student), "--data",
            str(tmp_path / "train"), "--run", str(tmp_path / "run"), "--batch", "4", "--frames", "32",
            "--lr", "3e-3", "--hidden-weight", "1.0", "--save-every", "10", "--kind-weights", "add=3"]  # as train lm
    assert main(args + ["--steps", "10"]) == 0
    assert main(args + ["--steps", "25", "--export", str(tmp_path / "distilled")]) == 0  # resumes at step 10
    before, after = held_out_kl(student), held_out_kl(tmp_path / "distilled")
    assert after < 0.7 * before, (before, after)
    assert load_lm(tmp_path / "distilled" / "lm.safetensors").cfg.layer_kinds == "MAA"
