import pytest
import torch

from models.checkpoint import CheckpointError
from models.lm import LMConfig, LMGenerator, LMModel, SamplingConfig, load_lm_state_dict
from models.lm.sampling import sample


def _model(pattern=None, seed=0):
    torch.manual_seed(seed)
    return LMModel(LMConfig.tiny(pattern)).eval()


def test_config_patterns():
    cfg = LMConfig.tiny("MMA")
    assert cfg.layer_kinds == "MMA"
    assert LMConfig(num_layers=8, pattern="MMMA").layer_kinds == "MMMAMMMA"
    with pytest.raises(ValueError):
        LMConfig(num_layers=4, pattern="MXA")


def test_first_frame_invalid_then_tokens_in_range():
    gen = LMGenerator(_model("MA"), SamplingConfig())
    st = gen.init_state(2, seeds=[1, 2])
    codes = torch.randint(0, 64, (2, 4))
    out = gen.step(codes, st)
    assert not out.valid.any()
    out = gen.step(codes, st)
    assert out.valid.all()
    assert ((out.audio >= 0) & (out.audio < 64)).all() and ((out.text >= 0) & (out.text < 100)).all()


@pytest.mark.parametrize("pattern", [None, "MMA"])
def test_seeded_sampling_is_batch_invariant(pattern):
    """A session samples the same tokens alone or batched with others (per-slot counter RNG)."""
    model = _model(pattern)
    gen = LMGenerator(model, SamplingConfig(temperature=1.0, top_k=20, text_temperature=1.0, text_top_k=10))
    codes = torch.randint(0, 64, (3, 4, 20), generator=torch.Generator().manual_seed(3))
    batched = gen.init_state(3, seeds=[11, 22, 33])
    alone = gen.init_state(1, seeds=[22])
    for t in range(20):
        ob = gen.step(codes[:, :, t], batched)
        oa = gen.step(codes[1:2, :, t], alone)
        assert torch.equal(ob.text[1:2], oa.text) and torch.equal(ob.audio[1:2], oa.audio)
    again = gen.init_state(1, seeds=[22])
    first = [gen.step(codes[1:2, :, t], again).audio for t in range(5)]
    other = gen.init_state(1, seeds=[23])
    assert any(not torch.equal(a, gen.step(codes[1:2, :, t], other).audio) for t, a in enumerate(first))


def test_reset_slot_restarts_session():
    gen = LMGenerator(_model("MA"), SamplingConfig.greedy())
    codes = torch.randint(0, 64, (2, 4, 8), generator=torch.Generator().manual_seed(0))
    st = gen.init_state(2)
    for t in range(5):
        gen.step(codes[:, :, t], st)
    gen.reset_slot(st, 1)
    fresh = gen.init_state(1)
    for t in range(3):
        o2 = gen.step(torch.stack([codes[0, :, t], codes[1, :, t]]), st)
        o1 = gen.step(codes[1:2, :, t], fresh)
        assert torch.equal(o2.audio[1:], o1.audio) and torch.equal(o2.valid[1:], o1.valid)


def test_hybrid_memory_is_constant_and_attention_bounded():
    cfg = LMConfig.tiny("MMA")
    model = LMModel(cfg).eval()
    gen = LMGenerator(model, SamplingConfig.greedy())
    st = gen.init_state(1)

    before = st.nbytes()
    for _ in range(cfg.context * 2 + 5):  # well past the attention window
        gen.step(torch.zeros(1, 4, dtype=torch.long), st)
    assert st.nbytes() == before


def test_sampling_top_k_and_greedy():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.9]])
    assert sample(logits, 0.0, 0).item() == 1
    seeds, counters = torch.tensor([0]), torch.tensor([0])
    seen = {sample(logits, 1.0, 2, seeds, counters + i).item() for i in range(200)}
    assert seen == {1, 3}


def test_checkpoint_errors():
    model = _model()
    sd = dict(model.state_dict())
    sd.pop("text_linear.weight")
    sd["emb.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as err:
        load_lm_state_dict(_model(), sd)
    assert "text_linear.weight" in str(err.value) and "emb.0.weight" in str(err.value)
