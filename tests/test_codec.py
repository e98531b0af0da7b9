import pytest
import torch

from models.checkpoint import CheckpointError
from models.codec import Codec, CodecConfig, load_codec, load_mimi_state_dict, save_codec
from models.codec.checkpoint import export_mimi_state_dict


def _random_codec(cfg: CodecConfig, seed: int = 0) -> Codec:
    torch.manual_seed(seed)
    codec = Codec(cfg).eval()
    codec.quantizer.rvq_first.codebooks.normal_()
    codec.quantizer.rvq_rest.codebooks.normal_()
    return codec


def test_shapes_and_frame_rate():
    codec = _random_codec(CodecConfig.tiny(4))
    wav = torch.randn(2, 1, 1920 * 3 + 100) * 0.1
    codes = codec.encode(wav)
    assert codes.shape == (2, 4, 4) and codes.dtype == torch.int64
    assert codec.decode(codes).shape == (2, 1, 1920 * 4)


@pytest.mark.parametrize("cfg", [CodecConfig.tiny(4), CodecConfig.mimi(8)], ids=["tiny", "mimi"])
def test_offline_equals_streaming(cfg, speech):
    codec = _random_codec(cfg)
    wav = speech(3.2 if cfg.seanet.dimension > 32 else 6.0)
    frames = wav.shape[-1] // 1920
    wav = wav[..., : frames * 1920]
    codes = codec.encode(wav)
    audio = codec.decode(codes)
    state = codec.init_state(1)
    s_codes = torch.cat([codec.encode_step(wav[..., i * 1920:(i + 1) * 1920], state) for i in range(frames)], -1)
    s_audio = torch.cat([codec.decode_step(s_codes[..., i:i + 1], state) for i in range(frames)], -1)
    assert torch.equal(codes, s_codes)
    assert (audio - s_audio).abs().max() < 1e-5


def test_streaming_exact_past_attention_context():
    """Windowed attention stays exact when streaming beyond the 250-step context (10 s)."""
    cfg = CodecConfig.tiny(4)
    cfg.transformer.context = 6  # 6 steps at 25 Hz: 3 frames
    codec = _random_codec(cfg)
    wav = torch.randn(1, 1, 1920 * 12) * 0.1
    codes = codec.encode(wav)
    state = codec.init_state(1)
    s_codes = torch.cat([codec.encode_step(wav[..., i * 1920:(i + 1) * 1920], state) for i in range(12)], -1)
    assert torch.equal(codes, s_codes)
    audio = codec.decode(codes)
    state = codec.init_state(1)
    s_audio = torch.cat([codec.decode_step(codes[..., i:i + 1], state) for i in range(12)], -1)
    assert (audio - s_audio).abs().max() < 1e-5


def test_batch_slots_are_independent_and_resettable():
    codec = _random_codec(CodecConfig.tiny(4))
    wav = torch.randn(2, 1, 1920 * 4) * 0.1
    state = codec.init_state(2)
    for i in range(2):
        codec.encode_step(wav[..., i * 1920:(i + 1) * 1920], state)
    # Slot 1 starts a new session: after reset it must behave like a fresh state.
    state.reset(torch.tensor([False, True]))
    fresh = codec.init_state(1)
    got = codec.encode_step(wav[1:, :, :1920], fresh)
    both = codec.encode_step(torch.cat([wav[:1, :, 2 * 1920:3 * 1920], wav[1:, :, :1920]]), state)
    assert torch.equal(both[1:], got)


def test_save_load_roundtrip(tmp_path):
    codec = _random_codec(CodecConfig.tiny(4))
    path = tmp_path / "codec.safetensors"
    save_codec(codec, path)
    loaded = load_codec(path)
    wav = torch.randn(1, 1, 1920 * 2)
    assert torch.equal(codec.encode(wav), loaded.encode(wav))


def test_checkpoint_errors_name_keys_and_shapes():
    codec = _random_codec(CodecConfig.tiny(4))
    sd = export_mimi_state_dict(codec)
    bad = dict(sd)
    bad.pop("encoder.model.0.conv.conv.weight")
    bad["encoder.model.99.conv.conv.weight"] = torch.zeros(1)
    bad["decoder.model.0.conv.conv.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as err:
        load_mimi_state_dict(Codec(CodecConfig.tiny(4)), bad)
    msg = str(err.value)
    assert "missing keys" in msg and "encoder.model.0.weight" in msg
    assert "unexpected keys" in msg and "encoder.model.99.weight" in msg
    assert "shape mismatches" in msg and "decoder.model.0.bias" in msg
    with pytest.raises(CheckpointError, match="not found"):
        load_codec("/nonexistent/mimi.safetensors")


def test_bad_inputs_raise_clear_errors():
    codec = _random_codec(CodecConfig.tiny(4))
    state = codec.init_state(1)
    with pytest.raises(ValueError, match="multiple of 1920"):
        codec.encode_step(torch.zeros(1, 1, 1000), state)
    with pytest.raises(ValueError, match="mono"):
        codec.encode(torch.zeros(1, 2, 1920))
    with pytest.raises(ValueError, match="empty"):
        codec.encode(torch.zeros(1, 1, 0))
    with pytest.raises(ValueError, match="code values"):
        codec.decode(torch.full((1, 4, 2), 10_000))
