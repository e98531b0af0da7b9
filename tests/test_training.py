"""Training code: text alignment, teacher forcing == streaming generation, codec/VQ steps, seeded synthesis."""

import random
import shutil

import numpy as np
import pytest
import torch

from agent.training.lm_data import EPAD, PAD, Example, text_stream
from agent.training.lm_train import Batcher, lm_loss
from models.lm import LMConfig, LMGenerator, LMModel, SamplingConfig


class _Tok:
    def encode(self, text):
        return [10 + len(w) for w in text.split()]


def test_text_stream_places_words_at_their_audio_frames():
    out = text_stream([(1920 * 3 + 5, "hello"), (1920 * 4, "you")], 8, _Tok())
    assert out.tolist() == [PAD, PAD, EPAD, 15, 13, PAD, PAD, PAD]  # 'you' pushed to the next free frame


def test_teacher_forced_training_logits_equal_streaming_generation():
    """The training layout is exactly what the generator streams: same inputs, same logits at every frame."""
    torch.manual_seed(0)
    cfg = LMConfig.tiny("MA")
    model = LMModel(cfg).eval()
    K, T = cfg.dep_q, 12
    ex = Example(user=torch.randint(0, cfg.card, (K, T)), agent=torch.randint(0, cfg.card, (K, T)),
                 text=torch.randint(0, cfg.text_card, (T,)), image=None, meta={})
    batcher = Batcher([ex], cfg, torch.zeros(K, dtype=torch.long), T + 1, random.Random(0))
    inputs, targets, _, _ = batcher.batch(1)
    with torch.no_grad():
        state = model.init_state(1, chunk=T)
        _, train_logits = model.forward_text(inputs, state)
        gen = LMGenerator(model, SamplingConfig.greedy())
        gstate = gen.init_state(1)
        ring = gstate.tokens.shape[-1]
        for s in range(T):
            out = gen.step(ex.user[:, s][None].long(), gstate)
            assert torch.allclose(out.text_logits, train_logits[:, s], atol=1e-5), f"frame {s}"
            col = int(gstate.offsets[0]) % ring  # force the data's tokens instead of the sampled ones
            gstate.tokens[0, 0, col] = targets[0, 0, s]
            gstate.tokens[0, 1:1 + K, col] = targets[0, 1:, s].clamp_min(0)


def _tiny_vision_lm() -> LMModel:
    """A seeded tiny hybrid LM with a 16 x 16 image encoder and one cross-attention adapter, in training mode."""
    import dataclasses

    from models.lm.config import VisionAdapterConfig
    from models.vision.encoder import ImageEncoderConfig

    torch.manual_seed(0)
    enc = dataclasses.asdict(ImageEncoderConfig(image_size=16, patch=8, dim=16, layers=1, heads=2))
    cfg = dataclasses.replace(LMConfig.tiny("MA"), vision=VisionAdapterConfig(xa_dim=16, encoder=enc))
    return LMModel(cfg).train()


@torch.enable_grad()  # conftest runs tests under no_grad
def test_lm_loss_backpropagates_through_backbone_depformer_and_vision():
    model = _tiny_vision_lm()
    cfg = model.cfg
    K, T = cfg.dep_q, 10
    img = torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8)
    exs = [Example(user=torch.randint(0, cfg.card, (K, T)), agent=torch.randint(0, cfg.card, (K, T)),
                   text=torch.full((T,), 5), image=im, meta={}) for im in (img, None)]
    batcher = Batcher(exs, cfg, torch.zeros(K, dtype=torch.long), T + 1, random.Random(0))
    inputs, targets, images, _ = batcher.batch(4)
    loss, parts = lm_loss(model, inputs, targets, images)
    loss.backward()
    assert parts["text"] > 0 and parts["audio"] > 0
    assert model.text_linear.weight.grad.abs().sum() > 0
    assert model.linears[-1].weight.grad.abs().sum() > 0
    if any(i is not None for i in images):
        assert model.image_encoder.patch_embed.weight.grad.abs().sum() > 0


def test_batcher_draws_kinds_by_weight_and_redraws_scene_layouts():
    from agent.training.lm_train import parse_kind_weights
    from agent.training.scenes import render

    cfg = LMConfig.tiny("MA")
    K, T = cfg.dep_q, 6
    scene = {"shape": "circle", "colour": "red", "count": 2}
    fixed = torch.from_numpy(render("circle", "red", 2, size=16, seed=0)).permute(2, 0, 1).contiguous()

    def example(kind, image=None):
        qa = {"scene": scene} if image is not None else {}
        return Example(user=torch.zeros(K, T, dtype=torch.long), agent=torch.zeros(K, T, dtype=torch.long),
                       text=torch.full((T,), 5), image=image, meta={"kind": kind, "qa": qa})

    exs = [example("add"), example("greet"), example("see", fixed)]
    weights = parse_kind_weights("add=8,greet=0")
    assert weights == {"add": 8.0, "greet": 0.0}
    batcher = Batcher(exs, cfg, torch.zeros(K, dtype=torch.long), T + 1, random.Random(0), kind_weights=weights,
                      fresh_scenes=True)
    drawn = [batcher.rng.choices(batcher.examples, weights=batcher.weights)[0].meta["kind"] for _ in range(900)]
    assert drawn.count("greet") == 0 and 0.8 < drawn.count("add") / len(drawn) < 0.97  # 8 / 9 expected
    # a fresh layout of the same scene each draw: same colour pixels count as red, different placement
    a, b = batcher.image(exs[2]), batcher.image(exs[2])
    assert a.shape == fixed.shape and not torch.equal(a, b)
    red = torch.tensor([220, 40, 40], dtype=torch.uint8)[:, None, None]
    assert (a == red).all(0).any() and (b == red).all(0).any()
    assert batcher.image(exs[0]) is None
    assert Batcher(exs, cfg, torch.zeros(K, dtype=torch.long), T + 1, random.Random(0)).image(exs[2]) is fixed
    for bad in ("add", "add=x", "add=-1"):
        with pytest.raises(Exception, match="KIND=WEIGHT"):
            parse_kind_weights(bad)


@torch.enable_grad()
def test_codec_training_step_reduces_loss_and_updates_codebooks():
    from agent.training.codec_train import codec_forward
    from agent.training.losses import reconstruction_loss
    from agent.training.vq import EMACodebooks
    from models.codec import Codec, CodecConfig

    torch.manual_seed(0)
    codec = Codec(CodecConfig.tiny(4)).train()
    vqs = [EMACodebooks(codec.quantizer.rvq_first), EMACodebooks(codec.quantizer.rvq_rest)]
    books = codec.quantizer.rvq_rest.codebooks.clone()
    opt = torch.optim.Adam(codec.parameters(), 3e-3)
    t = torch.arange(1920 * 4) / 24000
    wav = (0.3 * torch.sin(2 * torch.pi * 300 * t)).repeat(2, 1)
    losses = []
    for _ in range(8):
        recon, commit = codec_forward(codec, vqs, wav)
        loss, _ = reconstruction_loss(recon, wav)
        opt.zero_grad()
        (loss + 0.25 * commit).backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert not torch.equal(books, codec.quantizer.rvq_rest.codebooks)


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("flite") is None,
                    reason="espeak-ng/flite not installed (scripts/setup.sh installs them)")
def test_synthesis_is_seeded_and_aligned(tmp_path):
    from agent.training.synth import load_dialogues, synth_dataset

    synth_dataset(tmp_path / "a", 6, seed=5)
    synth_dataset(tmp_path / "b", 6, seed=5)
    a, b = load_dialogues(tmp_path / "a"), load_dialogues(tmp_path / "b")
    assert [d["qa"] for d in a] == [d["qa"] for d in b]
    assert all(np.array_equal(x["user"], y["user"]) for x, y in zip(a, b))
    spoken = [d for d in a if d["words"]]
    assert spoken
    for d in spoken:
        assert d["words"][0][0] > d["user_end"]  # the agent answers after the user's turn
        first = d["words"][0][0]
        assert np.abs(d["agent"][:first]).max() == 0 and np.abs(d["agent"][first:first + 4800]).max() > 300


@torch.enable_grad()
def test_auxiliary_question_and_scene_losses_train_backbone_and_image_encoder():
    """The CTC question loss reaches the backbone over the question window only, and falls when trained on."""
    from agent.training.aux_heads import AuxHeads

    model = _tiny_vision_lm()
    cfg = model.cfg
    K, T = cfg.dep_q, 12
    text = torch.full((T,), cfg.text_padding_id)
    text[6:8] = torch.tensor([20, 21])  # the answer starts at frame 6
    img = torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8)
    scene = {"shape": "square", "colour": "blue", "count": 3}
    ex = Example(user=torch.randint(0, cfg.card, (K, T)), agent=torch.randint(0, cfg.card, (K, T)), text=text,
                 image=img, meta={"qa": {"question": "how many squares", "scene": scene}})
    batcher = Batcher([ex], cfg, torch.zeros(K, dtype=torch.long), T + 1, random.Random(0), _Tok())
    inputs, targets, images, aux = batcher.batch(2)
    assert aux.window == [8, 8] and aux.question[0].tolist() == [13, 14, 17]
    assert aux.scene[0] == (1, 2, 2)
    heads = AuxHeads(cfg.dim, cfg.text_card, 16)
    opt = torch.optim.Adam(list(model.parameters()) + list(heads.parameters()), 3e-3)
    first = None
    for _ in range(15):
        loss, parts = lm_loss(model, inputs, targets, images, aux_heads=heads, aux=aux)
        opt.zero_grad()
        loss.backward()
        if first is None:
            first = parts
            assert model.emb[cfg.dep_q].weight.grad.abs().sum() > 0  # the question reaches the user track
            assert heads.scene.weight.grad.abs().sum() > 0
            assert model.image_encoder.patch_embed.weight.grad.abs().sum() > 0
        opt.step()
    assert parts["asr"] < first["asr"] and parts["scene"] < first["scene"]


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("flite") is None,
                    reason="espeak-ng/flite not installed (scripts/setup.sh installs them)")
def test_augmentation_varies_only_the_user_voice(tmp_path):
    from agent.training.synth import load_dialogues, synth_dataset

    synth_dataset(tmp_path / "plain", 6, seed=5)
    synth_dataset(tmp_path / "aug", 6, seed=5, augment=True)
    plain, aug = load_dialogues(tmp_path / "plain"), load_dialogues(tmp_path / "aug")
    assert [d["qa"] for d in plain] == [d["qa"] for d in aug]  # same questions, same order
    assert all(d["tempo"] == 1.0 for d in plain) and any(d["tempo"] != 1.0 for d in aug)
    for p, a in zip(plain, aug):
        if p["qa"] and a["tempo"] != 1.0:  # the question is warped: its turn is longer or shorter
            assert a["user_end"] != p["user_end"] and [w for _, w in a["words"]] == [w for _, w in p["words"]]


@torch.enable_grad()
def test_decoder_only_codec_training_keeps_every_code():
    """`duplex train codec --decoder-only` changes the decoder, never the codes (nor the encoded-data cache key)."""
    from agent.training.codec_train import DECODER_HALF, codec_forward
    from agent.training.lm_data import encoder_fingerprint
    from agent.training.losses import reconstruction_loss
    from agent.training.vq import EMACodebooks
    from models.codec import Codec, CodecConfig

    torch.manual_seed(0)
    codec = Codec(CodecConfig.tiny(4)).train()
    vqs = [EMACodebooks(codec.quantizer.rvq_first), EMACodebooks(codec.quantizer.rvq_rest)]
    wav = torch.randn(2, 1920 * 4) * 0.1
    with torch.no_grad():
        codes = codec.encode(wav[:, None])
    key = encoder_fingerprint(codec)
    decoder = [p for n, p in codec.named_parameters() if n.startswith(DECODER_HALF)]
    before = [p.detach().clone() for p in decoder]
    opt = torch.optim.Adam(decoder, 1e-2)
    for _ in range(3):
        recon, _ = codec_forward(codec, vqs, wav, frozen_encoder=True)
        opt.zero_grad()
        reconstruction_loss(recon, wav)[0].backward()
        opt.step()
    assert all(p.grad is None for n, p in codec.named_parameters() if n.startswith("encoder."))
    assert any(not torch.equal(a, b) for a, b in zip(before, decoder))
    with torch.no_grad():
        assert torch.equal(codec.encode(wav[:, None]), codes)
    assert encoder_fingerprint(codec) == key
    with torch.no_grad():
        next(codec.encoder.parameters()).add_(1.0)
    assert encoder_fingerprint(codec) != key


def test_codec_size_flags_flow_into_the_lm_config(tmp_path):
    """`train codec --codebooks 8 --filters 4` saves a codec whose file carries its size; `train lm` sizes the
    LM from it (8 codebooks per speaker), and the pair steps a frame."""
    from agent.default_model import codec_config, lm_config
    from models.codec import Codec, load_codec, save_codec
    from models.lm import LMGenerator, LMModel, SamplingConfig

    with pytest.raises(ValueError, match="codebooks"):
        codec_config(9)
    save_codec(Codec(codec_config(8, filters=4)), tmp_path / "codec.safetensors")
    codec = load_codec(tmp_path / "codec.safetensors")
    assert codec.num_codebooks == 8 and codec.cfg.seanet.n_filters == 4
    cfg = lm_config(codebooks=codec.num_codebooks)
    assert (cfg.dep_q, cfg.user_streams, len(cfg.delays)) == (8, 8, 17)
    gen = LMGenerator(LMModel(cfg).eval(), SamplingConfig.greedy())
    codes = codec.encode(torch.zeros(1, 1, codec.frame_size))
    out = gen.step(codes[..., 0], gen.init_state(1))
    assert out.audio.shape == (1, 8)


def test_lm_init_across_codebook_counts_loads_what_matches():
    """`train lm --init` from an LM of another codebook count: backbone and text weights carry over, the
    per-codebook tensors of other shapes keep their fresh values and are named."""
    from agent.default_model import lm_config
    from agent.training.lm_train import load_matching

    torch.manual_seed(0)
    old = LMModel(lm_config(codebooks=4))
    new = LMModel(lm_config(codebooks=8))
    before = {k: v.clone() for k, v in new.state_dict().items()}
    fresh = load_matching(new, old.state_dict())
    own, src = new.state_dict(), old.state_dict()
    assert fresh and all(k not in src or src[k].shape != own[k].shape for k in fresh)
    assert all(torch.equal(own[k], before[k]) for k in fresh)
    carried = [k for k in own if k not in fresh]
    assert any("text_emb" in k for k in carried) and any("transformer" in k or "layers" in k for k in carried)
    assert all(torch.equal(own[k], src[k]) for k in carried)


def test_train_lm_pattern_builds_an_all_attention_teacher():
    """`train lm --pattern A` trains a fresh all-attention variant of the default model (the teacher that
    `duplex train distill` distils a converted hybrid from); the default stays the MMA hybrid."""
    import argparse

    from agent.training.lm_train import _build_model
    from models.codec import VocoderCodec

    codec = VocoderCodec()  # 8 codebooks, no semantic token
    teacher = _build_model(argparse.Namespace(pattern="A"), None, codec, "cpu")
    assert teacher.cfg.layer_kinds == "A" * teacher.cfg.num_layers
    default = _build_model(argparse.Namespace(pattern=None), None, codec, "cpu")
    assert "M" in default.cfg.layer_kinds
    assert sum(p.numel() for p in teacher.parameters()) != sum(p.numel() for p in default.parameters())


def test_train_lm_context_sets_the_attention_window_it_trains_and_exports(tmp_path):
    """`train lm --context N`: attention sees N frames back, in the training forward as in the saved model."""
    import argparse

    from agent.errors import UserFacingError
    from agent.training.lm_train import _build_model
    from models.codec import VocoderCodec
    from models.lm import load_lm, save_lm

    torch.manual_seed(0)
    model = _build_model(argparse.Namespace(pattern="A", context=2), None, VocoderCodec(), "cpu").eval()
    assert model.cfg.context == 2
    cfg = model.cfg
    tokens = torch.randint(0, cfg.card, (1, 1 + cfg.n_q, 16))
    tokens[:, 0] = torch.randint(0, cfg.text_card, (1, 16))
    changed = tokens.clone()
    changed[:, :, 0] = (changed[:, :, 0] + 1) % cfg.card  # only frame 0 differs

    def logits(m, t):
        return m.forward_text(t, m.init_state(1, chunk=t.shape[-1]))[1]

    a, b = logits(model, tokens), logits(model, changed)
    reach = cfg.num_layers * (cfg.context - 1)  # each attention layer looks one window further back
    assert not torch.allclose(a[:, 1], b[:, 1])  # the next frame still sees frame 0 ...
    assert torch.allclose(a[:, reach + 1:], b[:, reach + 1:], atol=1e-5)  # ... frames past the reach do not
    model.cfg.context = 250
    assert not torch.allclose(logits(model, tokens)[:, reach + 1:], logits(model, changed)[:, reach + 1:])
    model.cfg.context = 2
    save_lm(model, tmp_path / "lm.safetensors")
    assert load_lm(tmp_path / "lm.safetensors").cfg.context == 2
    with pytest.raises(UserFacingError, match="--context"):
        _build_model(argparse.Namespace(pattern=None, context=0), None, VocoderCodec(), "cpu")
