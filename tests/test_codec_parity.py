"""Parity with kyutai's reference implementation (moshi==0.2.13, test-only oracle)."""

import pytest
import torch

from agent.benchmarks.reference import import_reference, reference_mimi
from models.codec import Codec, CodecConfig, load_mimi_state_dict

loaders = import_reference()
pytestmark = pytest.mark.skipif(loaders is None, reason="reference package moshi==0.2.13 not installed")


def _legacy_names(sd):
    """Rename to the published file's fused attention names (what the real checkpoint contains)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("self_attn.in_projs.0.weight", "self_attn.in_proj_weight")
        k = k.replace("self_attn.out_projs.0.weight", "self_attn.out_proj.weight")
        out[k] = v
    return out


@pytest.mark.parametrize("tiny", [True, False], ids=["tiny", "mimi"])
@pytest.mark.parametrize("legacy", [True, False], ids=["published-names", "current-names"])
def test_parity_with_reference(tiny, legacy, speech):
    torch.manual_seed(1)
    ref = reference_mimi(loaders, tiny, num_codebooks=4 if tiny else 8)
    sd = ref.state_dict()
    ours = Codec(CodecConfig.tiny(4) if tiny else CodecConfig.mimi(8)).eval()
    load_mimi_state_dict(ours, _legacy_names(sd) if legacy else sd)

    wav = speech(6.0 if tiny else 4.0)
    frames = wav.shape[-1] // 1920
    wav = wav[..., : frames * 1920]
    ref_codes = ref.encode(wav)
    ref_audio = ref.decode(ref_codes)
    codes = ours.encode(wav)
    assert torch.equal(codes, ref_codes)
    assert (ours.decode(ref_codes) - ref_audio).abs().max() < 1e-4

    # Streaming, frame by frame, against the reference's own streaming mode.
    state = ours.init_state(1)
    with ref.streaming(1):
        for i in range(frames):
            chunk = wav[..., i * 1920:(i + 1) * 1920]
            rc = ref.encode(chunk)
            oc = ours.encode_step(chunk, state)
            assert torch.equal(oc, rc), f"frame {i}"
            assert (ours.decode_step(oc, state) - ref.decode(rc)).abs().max() < 1e-4
