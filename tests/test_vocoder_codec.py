"""The vocoder codec: analysis measures what it claims, synthesis rebuilds it, streaming equals offline, and its
k-means training, save/load and slot-pool use work."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.codec import VocoderCodec, VocoderConfig, load_codec, save_codec

RATE = 24_000


def _voiced(f0: float, seconds: float = 0.64, amp: float = 0.1) -> torch.Tensor:
    """A vowel-like tone: harmonics of f0 with a falling spectrum."""
    t = torch.arange(int(seconds * RATE)) / RATE
    x = sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 12))
    return (amp * x / x.abs().max()).float()


def _trained(seed: int = 0) -> VocoderCodec:
    """Codebooks drawn from real analysed frames (a stand-in for k-means), so codes mean something."""
    codec = VocoderCodec().eval()
    g = torch.Generator().manual_seed(seed)
    sounds = [_voiced(f, 0.96) for f in (110, 150, 220)] + [0.05 * torch.randn(23_040, generator=g)]
    frames = torch.cat([codec.features_step(x[None], codec.init_state(1)).reshape(-1, codec.cfg.frame_dim)
                        for x in sounds])
    codec.feature_mean.copy_(frames.mean(0))
    codec.feature_scale.copy_(1 / frames.std(0).clamp(min=1e-3))
    z = codec.normalize(frames)
    books = []
    for _ in range(codec.cfg.n_q):
        book = z[torch.randint(0, z.shape[0], (codec.cfg.bins,), generator=g)]
        books.append(book)
        z = z - book[torch.cdist(z, book).argmin(-1)]
    codec.codebooks.copy_(torch.stack(books))
    return codec


@pytest.mark.parametrize("f0", [100.0, 180.0, 260.0])
def test_pitch_and_voicing_are_measured(f0):
    codec = VocoderCodec()
    feats = codec.features_step(_voiced(f0)[None], codec.init_state(1))[0, 2:]  # skip the ramp-in
    est = torch.exp(feats[:, codec.cfg.n_mels])
    assert torch.all((est - f0).abs() < 0.04 * f0), est
    assert torch.all(feats[:, codec.cfg.n_mels + 1] > 0.9)
    noise = 0.05 * torch.randn(1, 15_360, generator=torch.Generator().manual_seed(0))
    assert codec.features_step(noise, codec.init_state(1))[0, :, codec.cfg.n_mels + 1].mean() < 0.2


def test_synthesis_rebuilds_envelope_pitch_and_level():
    """Analysis -> synthesis -> analysis keeps the pitch, the level and the band energies of a voiced sound."""
    codec = VocoderCodec()
    x = _voiced(150.0, 0.96)
    feats = codec.features_step(x[None], codec.init_state(1))
    y = codec.synthesize_step(feats, codec.init_state(1))
    again = codec.features_step(y, codec.init_state(1))
    inner = slice(4, -2)
    a, b = feats[0, inner], again[0, inner.start + 1: -1]  # the synthesis lags one hop
    assert (torch.exp(b[:, 32]) - 150).abs().max() < 6
    level_db = 10 * math.log10(y[0, 2000:-2000].square().mean() / x[2000:-2000].square().mean())
    assert abs(level_db) < 3, level_db
    loud = a[:, :32] > a[:, :32].max() - 6  # bands within ~26 dB of the peak
    assert (a[:, :32] - b[:, :32])[loud].abs().mean() < 1.0


def test_streaming_equals_offline_and_decoder_reset():
    codec = _trained()
    x = torch.cat([_voiced(120.0, 0.48), 0.03 * torch.randn(7680, generator=torch.Generator().manual_seed(1))])
    x = x[: x.numel() // 1920 * 1920][None, None]
    codes = codec.encode(x)
    state = codec.init_state(1)
    streamed = torch.cat([codec.encode_step(x[..., i:i + 1920], state) for i in range(0, x.shape[-1], 1920)], -1)
    assert torch.equal(codes, streamed)
    audio = codec.decode(codes)
    state = codec.init_state(1)
    pieces = torch.cat([codec.decode_step(codes[..., t:t + 1], state) for t in range(codes.shape[-1])], -1)
    assert torch.allclose(audio, pieces, atol=1e-6)
    assert audio.shape == x.shape
    # restarting the decoder rows gives the output of a fresh decoder
    state = codec.init_state(2)
    codec.decode_step(codes[..., :3].expand(2, -1, -1), state)
    codec.reset_decoder(state, torch.tensor([True, False]))
    out = codec.decode_step(codes[..., 3:5].expand(2, -1, -1), state)
    fresh = codec.decode_step(codes[..., 3:5], codec.init_state(1))
    assert torch.allclose(out[0], fresh[0], atol=1e-6)
    assert not torch.allclose(out[1], fresh[0], atol=1e-3)


def test_quantized_round_trip_tracks_the_input():
    """Through 8 codebooks the decoded sound keeps the input's pitch; fewer codebooks decode too."""
    codec = _trained()
    x = _voiced(150.0, 0.96)[None, None]
    y = codec.decode(codec.encode(x))
    est = codec.features_step(y[:, 0], codec.init_state(1))[0, 4:-2]
    voiced = est[:, 33] > 0.5
    assert voiced.float().mean() > 0.8
    assert (torch.exp(est[voiced, 32]) - 150).abs().median() < 10
    codec.set_num_codebooks(2)
    assert codec.encode(x).shape[1] == 2
    assert codec.decode(codec.encode(x)).shape == x.shape


def test_contrast_post_filter_sharpens_peaks_and_keeps_energy(tmp_path):
    torch.manual_seed(0)
    mel = torch.randn(2, 3, 32)
    plain = VocoderCodec(VocoderConfig())
    assert torch.equal(plain.enhance(mel), mel)  # off by default: rounds 1-4's decoder
    sharp = VocoderCodec(VocoderConfig(contrast=0.6, contrast_bands=9))
    out = sharp.enhance(mel)
    assert torch.allclose(torch.logsumexp(out, -1), torch.logsumexp(mel, -1), atol=1e-5)  # same energy
    assert (out.std(-1) > mel.std(-1)).all()  # more contrast between bands
    # a saved codec keeps its decoder setting; codes do not depend on it
    save_codec(sharp, tmp_path / "c.safetensors")
    assert load_codec(tmp_path / "c.safetensors").cfg.contrast == 0.6
    x = _voiced(150.0, 0.32)[None, None]
    assert torch.equal(sharp.encode(x), plain.encode(x))


def test_save_load_round_trip_and_bad_codes(tmp_path):
    codec = _trained()
    save_codec(codec, tmp_path / "codec.safetensors")
    loaded = load_codec(tmp_path / "codec.safetensors")
    assert isinstance(loaded, VocoderCodec) and loaded.num_codebooks == 8
    x = _voiced(200.0, 0.32)[None, None]
    assert torch.equal(loaded.encode(x), codec.encode(x))
    assert load_codec(tmp_path / "codec.safetensors", num_codebooks=4).encode(x).shape[1] == 4
    with pytest.raises(ValueError, match="code values"):
        loaded.decode(torch.full((1, 8, 2), 256))
    with pytest.raises(ValueError, match="codebooks"):
        VocoderCodec(VocoderConfig(num_codebooks=9))


def test_kmeans_training_resumes_and_exports(tmp_path):
    """`train codec --kind vocoder` on a few dialogues: each stage lowers the residual, an interrupted run
    resumes after its last finished stage, and the export loads and encodes."""
    from agent.training.synth import synth_dataset
    from agent.training.vocoder_train import kmeans, nearest, train_vocoder

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 6, generator=g)
    book = kmeans(x, 16, 8, g)
    assert (x - book[nearest(x, book)]).square().mean() < 0.6 * x.square().mean()

    synth_dataset(tmp_path / "data", 6, seed=3)
    args = SimpleNamespace(data=str(tmp_path / "data"), run=str(tmp_path / "run"), codebooks=8, seed=0,
                           max_frames=5000, iters=3, threads=None)
    import agent.training.vocoder_train as vt

    real_kmeans, calls = vt.kmeans, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_kmeans(*a, **k)

    vt.kmeans = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            train_vocoder(args)
    finally:
        vt.kmeans = real_kmeans
    ckpt = torch.load(tmp_path / "run" / "vocoder_train.pt", weights_only=False)
    assert len(ckpt["books"]) == 2
    assert train_vocoder(args) == 0
    codec = load_codec(tmp_path / "run" / "codec.safetensors")
    assert torch.equal(codec.codebooks[:2], torch.stack(ckpt["books"]))
    codes = codec.encode(_voiced(150.0, 0.32)[None, None])
    assert codes.shape == (1, 8, 4) and int(codes.max()) < 256


def test_slot_pool_runs_the_vocoder_codec_batched_like_alone():
    from agent.default_model import lm_config
    from models.lm import LMGenerator, LMModel, SamplingConfig
    from streaming.slots import SlotPool

    torch.manual_seed(0)
    codec = _trained()
    gen = LMGenerator(LMModel(lm_config(codebooks=8)).eval(), SamplingConfig())
    rng = np.random.default_rng(0)
    frames = (0.05 * rng.standard_normal((6, 2, 1920))).astype(np.float32)
    both = SlotPool(codec, gen, 2, 0.002, graphs=False)
    alone = SlotPool(codec, gen, 1, 0.002, graphs=False)
    both.add(7), both.add(8), alone.add(8)
    for t in range(6):
        a = both.step(frames[t])
        b = alone.step(frames[t, 1:])
        assert np.array_equal(a.audio_codes[1], b.audio_codes[0])
        np.testing.assert_allclose(a.pcm[1], b.pcm[0], atol=1e-5)
