"""Parity of the LM and generator with kyutai's reference `LMModel` + `LMGen` (moshi==0.2.13)."""

import pytest
import torch

from benchmarks.reference import import_reference, reference_mimi
from models.lm import LMConfig, LMGenerator, LMModel, SamplingConfig, load_lm_state_dict

loaders = import_reference()
pytestmark = pytest.mark.skipif(loaders is None, reason="reference package moshi==0.2.13 not installed")
K = 4


def _reference_lm():
    kwargs = dict(loaders._lm_kwargs, dim=64, text_card=100, n_q=2 * K, dep_q=K, card=64, num_heads=4,
                  num_layers=2, context=50, depformer_dim=32, depformer_dim_feedforward=int(4.125 * 32),
                  depformer_num_heads=2, depformer_num_layers=2, depformer_context=K,
                  delays=[0] + ([0] + [1] * (K - 1)) * 2)
    torch.manual_seed(0)
    return loaders.get_moshi_lm(None, lm_kwargs=kwargs, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def speech_codes():
    from tests.conftest import real_speech_24k

    torch.manual_seed(5)
    mimi = reference_mimi(loaders, tiny=True, num_codebooks=K)
    with torch.no_grad():
        return mimi.encode(real_speech_24k(10.0))  # [1, K, 125]: 125 frames of real speech


@pytest.mark.parametrize("names", ["current", "published"])
def test_greedy_tokens_and_logits_match_reference(speech_codes, names):
    from moshi.models import LMGen

    ref = _reference_lm()
    sd = ref.state_dict()
    if names == "published":  # the released file fuses per-step projections step-major
        from models.lm.checkpoint import convert_moshi_state_dict

        sd = convert_moshi_state_dict(sd)
    ours = LMModel(LMConfig.tiny()).eval()
    load_lm_state_dict(ours, sd)

    ref_logits = []
    ref_gen = LMGen(ref, use_sampling=False, on_text_logits_hook=lambda t: ref_logits.append(t.clone()))
    gen = LMGenerator(ours, SamplingConfig.greedy())
    state = gen.init_state(1)
    frames = speech_codes.shape[-1]
    assert frames >= 100
    with torch.no_grad(), ref_gen.streaming(1):
        for t in range(frames):
            ref_out = ref_gen.step(speech_codes[:, :, t:t + 1])
            out = gen.step(speech_codes[:, :, t], state)
            assert (out.text_logits - ref_logits[-1][:, 0, 0]).abs().max() < 1e-4
            if ref_out is None:
                assert not out.valid.any()
                continue
            assert out.valid.all()
            assert torch.equal(torch.cat([out.text, out.audio[0]]), ref_out[0, :, 0]), f"frame {t}"
