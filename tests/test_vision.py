"""Vision: gated cross-attention math, cached image KV, swapping images mid-session, camera sampling, bad images."""

import asyncio
import dataclasses
import io

import numpy as np
import pytest
import torch

from agent import Agent, AgentConfig, AudioOut, ImageGate, ImageUpdated, InvalidImageError
from agent.bundle import load_bundle
from agent.registry import resolve
from models.lm import LMConfig, LMGenerator, LMModel, SamplingConfig, load_lm_state_dict
from models.lm.config import VisionAdapterConfig
from models.vision.cross_attention import (
    GatedCrossAttention,
    SharedCrossAttention,
    VisionState,
    cross_attention_reference,
)
from models.vision.encoder import ImageEncoderConfig

ENC = dataclasses.asdict(ImageEncoderConfig(image_size=32, patch=8, dim=24, layers=1, heads=2))


def _vision_lm(xa_dim=24, layers=None, seed=0):
    torch.manual_seed(seed)
    cfg = dataclasses.replace(LMConfig.tiny("MA"), vision=VisionAdapterConfig(xa_dim=xa_dim, layers=layers,
                                                                              encoder=ENC))
    return LMModel(cfg).eval()


@pytest.mark.parametrize("xa_dim", [24, 64])  # split q/kv weights, and the fused layout when widths match
def test_gated_cross_attention_matches_reference(xa_dim):
    torch.manual_seed(0)
    dim, heads = 64, 4
    shared = SharedCrossAttention(dim, xa_dim, heads)
    xa = GatedCrossAttention(shared, dim)
    x, tokens = torch.randn(2, 3, dim), torch.randn(2, 10, xa_dim)
    k, v = shared.project_kv(tokens)
    state = VisionState(keys=k, values=v, present=torch.tensor([True, False]), gate=torch.zeros(2))
    y, gate = xa(x, state)
    ref = cross_attention_reference(x, tokens, shared._wq(), shared._wkv(), shared.out_proj.weight,
                                    xa.gate.alpha[0].weight, xa.gate.alpha[2].weight, heads)
    assert torch.allclose(y[0], ref[0], atol=1e-5)
    assert torch.all(y[1] == 0) and gate[1] == 0  # no image: no contribution
    assert 0 < float(gate[0]) < 1


def test_cross_attention_is_shared_and_image_kv_computed_once():
    model = _vision_lm(layers=[0, 1])
    a, b = (layer.cross_attention for layer in model.transformer.layers)
    assert a.mha is b.mha and a.gate is not b.gate
    gen = LMGenerator(model, SamplingConfig.greedy())
    state = gen.init_state(1)
    calls = []
    model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    model.set_image(state.backbone, 0, model.encode_image(torch.rand(1, 3, 32, 32))[0])
    for _ in range(5):
        gen.step(torch.zeros(1, 4, dtype=torch.long), state)
    assert len(calls) == 1  # steps reuse the cached keys/values


def test_swapping_images_changes_output_deterministically():
    def run(images_at: dict):
        model = _vision_lm()
        gen = LMGenerator(model, SamplingConfig.greedy())
        state = gen.init_state(1)
        logits = []
        for t in range(12):
            if t in images_at:
                model.set_image(state.backbone, 0, model.encode_image(images_at[t][None])[0])
            logits.append(gen.step(torch.full((1, 4), t % 7), state).text_logits)
        return torch.cat(logits)

    torch.manual_seed(1)
    red, blue = torch.zeros(3, 32, 32), torch.zeros(3, 32, 32)
    red[0], blue[2] = 1, 1
    a, b = run({0: red, 6: blue}), run({0: red, 6: blue})
    c = run({0: red})
    assert torch.equal(a, b)  # deterministic
    assert torch.equal(a[:6], c[:6]) and not torch.allclose(a[6:], c[6:])  # the swap changes what follows


def test_summary_token_joins_the_patch_tokens_and_the_lm_attends_to_it():
    """The whole-image token (`summary=1`) is one more image token; a model saved without it still loads."""
    from models.vision.encoder import ImageEncoder

    torch.manual_seed(0)
    cfg = ImageEncoderConfig(image_size=16, patch=8, dim=16, layers=1, heads=2, summary=1)
    enc = ImageEncoder(cfg)
    assert cfg.num_patches == 4 and cfg.num_tokens == 5
    a, b = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    tokens = enc(a)
    assert tokens.shape == (2, 5, 16)
    # the summary depends on the whole image: changing one corner changes it
    b = a.clone()
    b[:, :, :8, :8] = 0
    assert not torch.allclose(enc(b)[:, -1], tokens[:, -1])
    plain = ImageEncoder(dataclasses.replace(cfg, summary=0))
    assert plain(a).shape == (2, 4, 16)
    missing = enc.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("summary") for k in missing)
    lm_cfg = dataclasses.replace(LMConfig.tiny("MA"), vision=VisionAdapterConfig(
        xa_dim=16, encoder=dataclasses.asdict(cfg)))
    model = LMModel(lm_cfg).eval()
    gen = LMGenerator(model, SamplingConfig.greedy())
    state = gen.init_state(1)
    model.set_image(state.backbone, 0, model.encode_image(a[:1])[0])
    assert gen.step(torch.zeros(1, lm_cfg.dep_q, dtype=torch.long), state).text_logits.isfinite().all()


def test_moshivis_layout_loads_with_shared_projection_stored_once():
    model = _vision_lm(layers=[0, 1])
    sd = model.state_dict()
    stored = {k: v for k, v in sd.items() if not k.startswith("transformer.layers.1.cross_attention.mha.")}
    assert len(stored) < len(sd)
    other = _vision_lm(layers=[0, 1], seed=5)
    load_lm_state_dict(other, stored, "MoshiVis-layout test file")
    assert torch.equal(other.transformer.layers[1].cross_attention.mha.in_proj_weight_q,
                       sd["transformer.layers.0.cross_attention.mha.in_proj_weight_q"])


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(resolve("default"), device="cpu")


def _png(rgb: np.ndarray) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="image2pipe") as c:
        s = c.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = rgb.shape[1], rgb.shape[0], "rgb24"
        for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return buf.getvalue()


def test_bad_images_give_clear_errors_and_session_goes_on(bundle):
    async def main():
        async with Agent(bundle, AgentConfig(max_sessions=1, realtime=False)) as agent, agent.session() as s:
            for bad, match in [(np.zeros((64, 64), np.uint8), "grayscale"), (np.zeros((4, 4, 3), np.uint8), "size"),
                               (b"\x89PNG not really", "corrupt"), (np.full((32, 32, 3), np.nan), "NaN"),
                               ("missing.png", "not found"), (np.zeros((32, 32, 3), np.int64), "dtype")]:
                with pytest.raises(InvalidImageError, match=match):
                    s.send_image(bad)
            rgb = np.zeros((48, 80, 3), np.uint8)
            rgb[:, :40] = (255, 0, 0)
            await s.show_image(_png(rgb))  # encoded bytes work, any size is centre-cropped and resized
            await s.send_audio(np.zeros(1920 * 3, np.float32))
            await s.end_input()
            kinds = set()
            async for ev in s.events(timeout=10):
                kinds.add(type(ev))
                if s.frames_out >= 3:
                    break
            return kinds

    kinds = asyncio.run(main())
    assert ImageUpdated in kinds and ImageGate in kinds and AudioOut in kinds


def test_camera_frames_are_sampled_deduplicated_and_never_block_audio(bundle):
    async def main():
        config = AgentConfig(max_sessions=1, vision_fps=10)
        async with Agent(bundle, config) as agent, agent.session() as s:
            slow = agent.pool.encode_image

            def slow_encode(image):  # a slow encoder must not stall the frame clock
                import time

                time.sleep(0.4)
                return slow(image)

            agent.pool.encode_image = slow_encode
            frame = np.zeros((64, 64, 3), np.uint8)
            frame[:32] = (0, 255, 0)
            for _ in range(15):  # a 30 fps camera showing the same view
                s.send_image(frame)
                s.send_audio_nowait(np.zeros(640, np.float32))
                await asyncio.sleep(1 / 30)
            before = s.frames_out
            await asyncio.sleep(0.5)
            during = s.frames_out - before
            moved = frame.copy()
            moved[32:] = (0, 0, 255)
            s.send_image(moved)
            updates = []
            async for ev in s.events(timeout=5):
                if isinstance(ev, ImageUpdated):
                    updates.append(ev)
                    if len(updates) == 2:
                        break
            return during, updates, s.images_skipped

    during, updates, skipped = asyncio.run(main())
    assert during >= 4  # ~6 frames of 80 ms passed while images were being encoded
    assert len(updates) == 2 and updates[0].change == 1.0 and updates[1].change > 0.02
    assert skipped >= 1  # identical camera frames were not re-encoded
