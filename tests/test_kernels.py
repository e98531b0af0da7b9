"""Fused Triton kernels vs their PyTorch references: on GPU when present, else via TRITON_INTERPRET=1."""

import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton not installed (pip install 'duplex-agent[gpu]')")

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA: run with TRITON_INTERPRET=1 to test the kernels on CPU", allow_module_level=True)

from models.kernels import mamba2_ref, mamba2_triton  # noqa: E402
from models.lm.config import MambaConfig  # noqa: E402
from models.lm.layers import RMSNorm  # noqa: E402
from models.lm.mamba2 import Mamba2Mixer  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("groups", [1, 2])
def test_fused_mamba2_step_matches_reference_with_slots_and_padding(groups):
    torch.manual_seed(0)
    dim = 32
    mixer = Mamba2Mixer(dim, MambaConfig(d_state=16, headdim=8, ngroups=groups)).to(DEVICE).eval()
    mixer.use_fused = False  # the module's own forward is the PyTorch reference here
    pool = 5
    ref_states = [mixer.init_state(1) for _ in range(pool)]
    for s in ref_states:
        s.ssm.normal_()
        s.conv.normal_()
    conv_pool = torch.cat([s.conv for s in ref_states]).clone()
    ssm_pool = torch.cat([s.ssm for s in ref_states]).clone()
    slots = torch.tensor([3, -1, 0, 4], dtype=torch.int32, device=DEVICE)  # row 1 is padding
    with torch.no_grad():
        for _ in range(3):
            u = torch.randn(4, dim, device=DEVICE)
            fused = mamba2_triton.mamba2_step_fused(mixer, u, conv_pool, ssm_pool, slots)
            for row, slot in enumerate(slots.tolist()):
                if slot < 0:
                    assert fused[row].abs().max() == 0
                    continue
                ref = mixer(u[row:row + 1, None], ref_states[slot])[:, 0]
                assert (fused[row] - ref[0]).abs().max() < 1e-4
    for slot in range(pool):
        assert (ssm_pool[slot] - ref_states[slot].ssm[0]).abs().max() < 1e-4
        assert (conv_pool[slot] - ref_states[slot].conv[0]).abs().max() < 1e-5
    # untouched slots (1, 2) keep their state exactly
    untouched = [1, 2]
    for slot in untouched:
        assert torch.equal(ssm_pool[slot], ref_states[slot].ssm[0])


def test_fused_rmsnorm_matches_reference():
    norm = RMSNorm(48).to(DEVICE)
    with torch.no_grad():
        norm.alpha.normal_()
        x = torch.randn(3, 2, 48, device=DEVICE)
        assert (mamba2_triton.rmsnorm(x, norm.alpha) - norm.reference(x)).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rope_matches_reference(dtype):
    from models.attention import rope_rotate
    from models.kernels.rope_triton import rope_fused

    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(3, 5, 2 * 4 * 16, generator=g).to(DEVICE, dtype)  # [B, T, (H + H) * D] as projected
    q = qkv[..., :64].view(3, 5, 4, 16).transpose(1, 2)  # strided [B, H, T, D] view, like Attention.project
    positions = (torch.arange(5)[None] + torch.tensor([[0], [7], [2999]])).to(DEVICE)  # per-slot offsets
    for period in (10_000.0, 100.0):
        ref = rope_rotate(q, positions, period)
        out = rope_fused(q, positions, period)
        assert out.shape == ref.shape and out.dtype == dtype
        # angles reach ~3000 rad: one ulp of a frequency moves them by ~2e-4, and bf16 rounds the outputs
        rel = (out.float() - ref.float()).norm() / ref.float().norm()
        assert rel < (5e-5 if dtype == torch.float32 else 1e-2), rel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_add_rmsnorm_matches_separate_ops(dtype):
    norm = RMSNorm(1500).to(DEVICE)  # two column blocks with a ragged tail
    norm.alpha.normal_()
    x, u = (torch.randn(2, 3, 1500, device=DEVICE).to(dtype) for _ in range(2))
    total, out = mamba2_triton.add_rmsnorm(x, u, norm.alpha, norm.eps)
    ref_total = x + u
    if dtype == torch.float32:
        assert torch.equal(total, ref_total)
    else:  # one bf16 rounding (the interpreter's float->bf16 cast may round differently from a GPU's)
        assert ((total.float() - ref_total.float()).abs() <= ref_total.float().abs() * 2**-7 + 1e-6).all()
    ref = norm.reference(ref_total)
    rel = (out.float() - ref.float()).norm() / ref.float().norm()
    assert out.dtype == dtype and rel < (1e-6 if dtype == torch.float32 else 1e-2), rel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_silu_gate_matches_reference(dtype):
    from models.lm.layers import SiluGating

    h = torch.randn(2, 3, 2 * 1500, device=DEVICE).to(dtype)  # hidden 1500: two column blocks, a ragged tail
    out, ref = mamba2_triton.silu_gate(h), SiluGating.gate(h)
    assert out.shape == ref.shape == (2, 3, 1500) and out.dtype == dtype
    rel = (out.float() - ref.float()).norm() / ref.float().norm()
    assert rel < (1e-6 if dtype == torch.float32 else 1e-2), rel


def test_gated_rmsnorm_matches_reference():
    y, z = torch.randn(4, 64, device=DEVICE), torch.randn(4, 64, device=DEVICE)
    w = torch.randn(64, device=DEVICE)
    for groups in (1, 4):
        ref = mamba2_ref.gated_rmsnorm_ref(y, z, w, groups)
        assert (mamba2_triton.gated_rmsnorm(y, z, w, groups) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("pattern, batch", [(None, 2), ("MMA", 2), ("vision", 2), (None, 1), ("vision", 1)])
def test_lm_on_the_fused_path_matches_the_reference_path(pattern, batch):
    """Every fused kernel at once (embeddings, RMSNorm, add+RMSNorm chained across layers, one-query attention,
    SiLU gating, Mamba2 step, sampling; at batch 1 the GEMVs with the norm or the gating folded in) inside real
    frame steps, against the PyTorch path (on CPU through Triton's interpreter); "vision": a cross-attention
    layer in the chain, one slot showing an image."""
    import dataclasses

    from models.kernels import fused_path, reference_path
    from models.lm import LMConfig, LMGenerator, LMModel, SamplingConfig
    from models.lm.config import VisionAdapterConfig

    torch.manual_seed(0)
    cfg = LMConfig.tiny(pattern if pattern != "vision" else "MAM")
    if pattern == "vision":
        cfg = dataclasses.replace(cfg, vision=VisionAdapterConfig(xa_dim=24, layers=[1], num_tokens=5))
    model = LMModel(cfg).to(DEVICE).eval()
    image = torch.randn(5, 24, device=DEVICE)
    codes = torch.randint(0, 64, (8, batch, 4), device=DEVICE)
    for sampling in (SamplingConfig.greedy(), SamplingConfig(temperature=1.0, top_k=20, text_top_k=5)):
        gen = LMGenerator(model, sampling)
        runs = []
        for path in (fused_path, reference_path):
            with path():
                state = gen.init_state(batch, seeds=[3, 4][:batch])
                if cfg.vision is not None:
                    model.set_image(state.backbone, 0, image)
                runs.append([gen.step(codes[t], state) for t in range(8)])
        for f, r in zip(*runs):
            assert (f.text_logits - r.text_logits).abs().max() < 1e-3
        same = sum(torch.equal(f.audio, r.audio) and torch.equal(f.text, r.text) for f, r in zip(*runs))
        assert same >= 7  # float32 rounding may flip a near-tie once


def test_codec_streaming_on_the_fused_path_matches_the_reference_path():
    """The codec's transformer steps twice per frame through a chunk-1 cache (the pool's layout): the fused KV
    append must take each step's own position."""
    from models.codec import Codec, CodecConfig
    from models.kernels import fused_path, reference_path

    torch.manual_seed(0)
    codec = Codec(CodecConfig.tiny(4)).to(DEVICE).eval()
    wav = (0.1 * torch.randn(2, 1, codec.frame_size * 5)).to(DEVICE)
    outs = []
    for path in (fused_path, reference_path):
        with path():
            state = codec.init_state(2, chunk=1)
            codes = [codec.encode_step(wav[..., i * codec.frame_size:(i + 1) * codec.frame_size], state)
                     for i in range(5)]
            pcm = [codec.decode_step(c, state) for c in codes]
        outs.append((torch.cat(codes, -1), torch.cat(pcm, -1)))
    assert torch.equal(outs[0][0], outs[1][0])
    assert (outs[0][1] - outs[1][1]).abs().max() < 1e-4


@pytest.mark.parametrize("splits, kv_heads, rope", [(1, 4, 10_000.0), (3, 2, 10_000.0), (3, 4, None)])
def test_fused_decode_attention_matches_reference(splits, kv_heads, rope):
    """Over a ring that wraps (capacity 130 in three 64-entry blocks, context 100 < capacity, so the window
    test matters), rows at different offsets, MHA and GQA, with and without rotary embedding, the ring read
    whole or in splits: output, keys, values, positions and offsets all match the PyTorch path."""
    from models.attention import KVCacheState, streaming_attention
    from models.kernels import reference_path
    from models.kernels.attention_triton import decode_attention

    B, H, D, context, cap = 3, 4, 16, 100, 130
    ref = KVCacheState.create(B, kv_heads, D, cap, 1, device="cpu")
    fused = KVCacheState.create(B, kv_heads, D, cap, 1, device=DEVICE)
    ref.offset.copy_(torch.tensor([0, 60, 125]))  # rows 1 and 2 wrap; all pass the window of 100
    fused.offset.copy_(ref.offset)
    g = torch.Generator().manual_seed(0)
    for step in range(105):
        qkv = torch.randn(B, 1, (H + 2 * kv_heads) * D, generator=g)  # strided heads, as projected
        q = qkv[..., :H * D].view(B, 1, H, D).transpose(1, 2)
        k = qkv[..., H * D:(H + kv_heads) * D].view(B, 1, kv_heads, D).transpose(1, 2)
        v = qkv[..., (H + kv_heads) * D:].view(B, 1, kv_heads, D).transpose(1, 2)
        with reference_path():
            want = streaming_attention(q, k, v, ref, context, rope)
        qkv_d = qkv.to(DEVICE)
        got = decode_attention(qkv_d[..., :H * D].view(B, 1, H, D).transpose(1, 2),
                               qkv_d[..., H * D:(H + kv_heads) * D].view(B, 1, kv_heads, D).transpose(1, 2),
                               qkv_d[..., (H + kv_heads) * D:].view(B, 1, kv_heads, D).transpose(1, 2),
                               fused, context, rope, splits=splits)
        if step % 7 == 0 or step > 100:
            assert got.shape == want.shape and (got.cpu() - want).abs().max() < 1e-5, step
            for a, b in [(fused.keys, ref.keys), (fused.values, ref.values)]:
                assert (a.cpu() - b).abs().max() < 1e-5  # float32 angles of positions up to 275
            assert torch.equal(fused.positions.cpu(), ref.positions) and torch.equal(fused.offset.cpu(), ref.offset)


def test_fused_decode_attention_in_bfloat16():
    """The model's dtype on a GPU: keys stored rounded as the PyTorch path rounds them; output within bf16."""
    from models.attention import KVCacheState, streaming_attention
    from models.kernels import reference_path
    from models.kernels.attention_triton import decode_attention

    B, H, D, context = 2, 2, 32, 20
    ref = KVCacheState.create(B, H, D, context, 1, device="cpu", dtype=torch.bfloat16)
    fused = KVCacheState.create(B, H, D, context, 1, device=DEVICE, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        q, k, v = (torch.randn(B, H, 1, D, generator=g).bfloat16() for _ in range(3))
        with reference_path():
            want = streaming_attention(q, k, v, ref, context, 10_000.0)
        got = decode_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), fused, context, 10_000.0, splits=2)
        assert (got.float().cpu() - want.float()).abs().max() < 3e-2
    assert (fused.keys.float().cpu() - ref.keys.float()).abs().max() <= 2**-7 * ref.keys.float().abs().max()
    assert torch.equal(fused.values.cpu(), ref.values) and torch.equal(fused.positions.cpu(), ref.positions)


def test_fused_codec_chunk_loop_steps_each_position():
    """The codec steps its transformer twice per frame through a chunk-1 cache: each step must see its own
    position and the one before it (the fused path advances the offset per step)."""
    from models.attention import KVCacheState, streaming_attention
    from models.kernels import fused_path, reference_path

    ref = KVCacheState.create(2, 2, 8, 5, 1, device="cpu")
    fused = KVCacheState.create(2, 2, 8, 5, 1, device=DEVICE)
    for _ in range(4):
        q, k, v = torch.randn(2, 2, 2, 8), torch.randn(2, 2, 2, 8), torch.randn(2, 2, 2, 8)
        with reference_path():
            want = streaming_attention(q, k, v, ref, 5, 10_000.0)
        with fused_path():
            got = streaming_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), fused, 5, 10_000.0)
        assert (got.cpu() - want).abs().max() < 1e-5
        assert torch.equal(fused.positions.cpu(), ref.positions) and torch.equal(fused.offset.cpu(), ref.offset)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_fused_depformer_substep_attention_matches_reference(kv_heads):
    from models.kernels import fused_path, reference_path
    from models.lm.layers import Attention

    torch.manual_seed(0)
    attn = Attention(32, 4, kv_heads=kv_heads, steps=5).to(DEVICE)
    scratch = {path: torch.full((2, 2, kv_heads, 5, 8), float("nan"), device=DEVICE)  # unwritten entries: NaN
               for path in (fused_path, reference_path)}
    for step in range(5):
        x = torch.randn(2, 1, 32, device=DEVICE)
        outs = {}
        for path in (fused_path, reference_path):
            with path():
                outs[path] = attn.forward_substep(x, scratch[path], step)
        assert not outs[fused_path].isnan().any()
        assert (outs[fused_path] - outs[reference_path]).abs().max() < 1e-5
        written = scratch[reference_path][:, :, :, :step + 1]
        assert torch.equal(scratch[fused_path][:, :, :, :step + 1], written)


def test_gpu_path_launches_six_kernels_per_attention_layer():
    """The batch-1 frame step of a Moshi-shaped LM (32 layers, 8 x 6 depformer sub-steps), counted through the
    dispatcher with the fused GEMVs chosen (as on CPU): every attention is our two kernels (no SDPA, rotary,
    scatter or mask ops left), the norms and gatings ride in the GEMVs, and the step launches at most 15% of
    what the PyTorch path does."""
    from benchmarks.launches import count_launches

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("counts on CPU tensors, through Triton's interpreter")
    fused, reference = count_launches(), count_launches(reference=True)
    assert fused["triton:decode_kernel"] == 32 + 8 * 6 and fused["triton:merge_kernel"] == 32
    assert not [name for name in fused if "attention" in name or name in ("triton:rope_fused", "arange")]
    # each layer's q|k|v (norm folded in), MLP input (add + norm folded in) and MLP output (gating folded in)
    assert fused["triton:gemv_kernel"] == 3 * (32 + 8 * 6) and "triton:silu_gate" not in fused
    assert sum(fused.values()) <= 0.15 * sum(reference.values())
    import models.kernels.attention_triton as attention_k
    import models.lm.layers as layers
    from models.kernels import mamba2_triton

    # the counting hooks were taken off again
    assert isinstance(attention_k._decode_kernel, triton.runtime.KernelInterface)
    assert layers.silu_gate is mamba2_triton.silu_gate and "wrapped" not in layers.silu_gate.__qualname__


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_gemvs_match_the_separate_ops(dtype):
    """Odd sizes (K 100, N 37: partial blocks on both axes); bf16 rounds every intermediate as the separate ops
    do, so only the GEMV's summation order differs."""
    from models.kernels.gemv_triton import gated_linear_fused, norm_linear_fused
    from models.lm.layers import SiluGating

    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(100).to(DEVICE, dtype)
    norm.alpha.data = (1 + torch.randn(1, 1, 100, generator=g)).to(DEVICE, dtype)
    w = torch.randn(37, 100, generator=g).to(DEVICE, dtype) / 10
    x, pending = (torch.randn(1, 1, 100, generator=g).to(DEVICE, dtype) for _ in range(2))
    rel = 1e-5 if dtype == torch.float32 else 2e-2  # of the output's scale
    for upd in (pending, None):
        s, y = norm_linear_fused(x, upd, norm.alpha, norm.eps, w)
        s_ref = x + upd if upd is not None else x
        y_ref = torch.nn.functional.linear(norm.reference(s_ref), w)
        assert y.shape == (1, 1, 37)
        # exact in float32; bf16 within one rounding (the interpreter's float->bf16 cast may truncate)
        assert ((s.float() - s_ref.float()).abs() <= 2**-7 * s_ref.float().abs()).all()
        assert (y.float() - y_ref.float()).abs().max() <= rel * y_ref.float().abs().max()
    h = torch.randn(1, 1, 200, generator=g).to(DEVICE, dtype)
    y_ref = torch.nn.functional.linear(SiluGating.gate(h), w)
    assert (gated_linear_fused(h, w).float() - y_ref.float()).abs().max() <= rel * y_ref.float().abs().max()


def test_gemv_choice_forced_by_environment_and_rows(monkeypatch):
    """DUPLEX_GEMV forces one path; a step of several rows always takes the separate ops (the fused kernels
    are for one row); on CPU (the interpreter) the fused kernel runs."""
    from models.kernels.gemv_triton import gated_linear

    w = torch.randn(8, 16, device=DEVICE)
    used = []

    def separate(h):
        used.append(h.shape[0])
        return torch.nn.functional.linear(h[..., :16], w)

    gated_linear(torch.randn(1, 1, 32, device=DEVICE), w, separate)
    gated_linear(torch.randn(2, 1, 32, device=DEVICE), w, separate)
    monkeypatch.setenv("DUPLEX_GEMV", "cublas")
    gated_linear(torch.randn(1, 1, 32, device=DEVICE), w, separate)
    expected = [2, 1] if DEVICE == "cpu" else used  # on a GPU the first call is decided by timing
    assert used == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_embedding_accumulates_and_zeroes_missing_tokens(dtype):
    from models.kernels.embedding_triton import embed_into
    from models.lm.layers import Embedding

    tables = [Embedding(11, 40).to(DEVICE, dtype) for _ in range(3)]
    tokens = torch.tensor([[[3, -1], [0, 10], [-1, -1]], [[10, 2], [-1, 5], [7, 7]]], device=DEVICE)  # [B, 3, T]
    ref = tables[0](tokens[:, 0])
    for i, t in enumerate(tables[1:], start=1):  # the PyTorch path's sum, rounded to dtype after each add
        ref = ref + t(tokens[:, i])
    out = torch.full((2, 2, 40), float("nan"), device=DEVICE, dtype=dtype)  # poisoned: every element is written
    for i, t in enumerate(tables):
        embed_into(out, t.weight, tokens[:, i], accumulate=i > 0)
    assert not out.isnan().any()
    if dtype == torch.float32:
        assert torch.equal(out, ref)
    else:  # one bf16 rounding per add either way (the interpreter's float->bf16 cast may round differently)
        scale = sum(t(tokens[:, i]).float().abs() for i, t in enumerate(tables))
        assert ((out.float() - ref.float()).abs() <= scale * 2**-6 + 1e-6).all()
