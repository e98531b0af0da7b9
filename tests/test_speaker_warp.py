"""Speakers drawn in the vocoder codec's feature space (`duplex train lm --speaker-warps N`)."""

import math
import random

import numpy as np
import pytest
import torch

from agent.registry import EMBEDDED_DIR
from agent.training.speaker_warp import SpeakerWarp, encode_warped

N_MELS = 32


def _features(frames: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(frames, N_MELS, generator=g)
    log_f0 = torch.full((frames,), math.log(150.0))
    voicing = (torch.arange(frames) % 2).float()  # every other vector voiced
    return torch.cat([mel, log_f0[:, None], voicing[:, None]], -1)


def test_identity_warp_changes_nothing_and_each_part_does_its_job():
    f = _features()
    assert torch.allclose(SpeakerWarp().apply(f, N_MELS), f)
    shifted = SpeakerWarp(shift=1.0).apply(f, N_MELS)
    assert torch.allclose(shifted[:, 1:N_MELS], f[:, : N_MELS - 1])  # formants one band up
    assert torch.allclose(shifted[:, 0], f[:, 0])  # the edge repeats
    half = SpeakerWarp(shift=0.5).apply(f, N_MELS)
    assert torch.allclose(half[:, 5], 0.5 * (f[:, 4] + f[:, 5]))
    tilted = SpeakerWarp(tilt=2.0).apply(f, N_MELS)
    delta = tilted[:, :N_MELS] - f[:, :N_MELS]
    assert torch.allclose(delta[:, 0], torch.full((20,), -1.0)) and torch.allclose(delta[:, -1], torch.ones(20))
    pitched = SpeakerWarp(pitch=1.2).apply(f, N_MELS)
    voiced = f[:, N_MELS + 1] > 0
    assert torch.allclose(pitched[voiced, N_MELS].exp(), torch.full((int(voiced.sum()),), 180.0))
    assert torch.equal(pitched[~voiced, N_MELS], f[~voiced, N_MELS])  # unvoiced vectors keep their placeholder
    assert torch.equal(pitched[:, N_MELS + 1], f[:, N_MELS + 1])


def test_draws_are_seeded_and_stay_in_range():
    a = [SpeakerWarp.draw(random.Random(3)) for _ in range(2)]
    assert a[0] == a[1]
    draws = [SpeakerWarp.draw(random.Random(s)) for s in range(200)]
    assert len({d.shift for d in draws}) == 200
    assert all(-1.5 <= d.shift <= 1.5 and -1.5 <= d.tilt <= 1.5 and 0.8 <= d.pitch <= 1.25 for d in draws)


def _default_codec():
    from models.codec import load_codec

    return load_codec(EMBEDDED_DIR / "default" / "codec.safetensors")


def _voice_like(seconds: float, rate: int = 24_000) -> torch.Tensor:
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 25)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t))
    return torch.from_numpy(0.1 * x.astype(np.float32))


def test_encode_warped_keeps_the_original_codes_and_draws_other_speakers():
    codec = _default_codec()
    frames = 10
    wav = torch.stack([_voice_like(frames * 0.08), 0.5 * _voice_like(frames * 0.08)])
    warps = [[SpeakerWarp(), SpeakerWarp(shift=1.2, tilt=-1.0, pitch=1.2)] for _ in range(2)]
    original, same, other = encode_warped(codec, wav, warps)
    assert torch.equal(original, codec.encode(wav[:, None]))  # analysis shared, quantization as the codec's own
    assert torch.equal(same, original)
    assert other.shape == original.shape and (other != original).float().mean() > 0.3


def test_encoded_examples_carry_drawn_speakers_and_the_batcher_uses_every_version():
    from agent.training.lm_data import encode_dialogues
    from agent.training.lm_train import Batcher
    from models.codec import FRAME_SIZE
    from models.lm import LMConfig
    from models.lm.tokenizer import TextTokenizer

    codec = _default_codec()
    tokenizer = TextTokenizer(EMBEDDED_DIR / "default" / "tokenizer.model")
    user = (_voice_like(6 * FRAME_SIZE / 24_000).numpy() * 32767).astype(np.int16)
    dialogue = {"user": user, "agent": np.zeros_like(user), "words": [(2 * FRAME_SIZE, "hello")], "kind": "greet",
                "voice": "test", "qa": None, "user_end": user.size}
    plain = encode_dialogues([dialogue], codec, tokenizer, 16)
    warped = encode_dialogues([dialogue], codec, tokenizer, 16, speaker_warps=2, seed=4)
    again = encode_dialogues([dialogue], codec, tokenizer, 16, speaker_warps=2, seed=4)
    assert plain[0].alt_users is None
    ex = warped[0]
    assert torch.equal(ex.user, plain[0].user) and torch.equal(ex.agent, plain[0].agent)
    assert ex.alt_users.shape == (2, *ex.user.shape)
    assert torch.equal(ex.alt_users, again[0].alt_users)  # seeded
    assert not torch.equal(ex.alt_users[0], ex.alt_users[1])  # two different speakers

    cfg = LMConfig.tiny("MA")
    K = cfg.dep_q
    if ex.user.shape[0] < K:
        pytest.skip("the tiny config needs more codebooks than the default codec has")
    batcher = Batcher(warped, cfg, torch.zeros(K, dtype=torch.long), 6 + 1, random.Random(0))
    versions = [ex.user, *ex.alt_users]
    seen = set()
    for _ in range(60):
        rows = batcher.grid(ex)[1 + K:, :6]
        match = [i for i, v in enumerate(versions) if torch.equal(rows, v[:K, :6].long())]
        assert match
        seen.add(match[0])
    assert seen == {0, 1, 2}
