import pytest
import torch

from models.lm import LMConfig, LMGenerator, LMModel, SamplingConfig
from models.lm.cuda_graph import GraphedGenerator


def test_graphed_generator_falls_back_on_cpu():
    model = LMModel(LMConfig.tiny("MA")).eval()
    gen = LMGenerator(model, SamplingConfig.greedy())
    graphed = GraphedGenerator(gen, gen.init_state(1))
    assert not graphed.enabled
    ref_state = gen.init_state(1)
    for t in range(4):
        codes = torch.full((1, 4), t)
        assert torch.equal(graphed.step(codes).audio, gen.step(codes, ref_state).audio)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_replay_matches_eager_and_survives_slot_reset():
    torch.manual_seed(0)
    model = LMModel(LMConfig.tiny("MMA")).cuda().eval()
    gen = LMGenerator(model, SamplingConfig(temperature=1.0, top_k=10, text_temperature=1.0, text_top_k=5))
    graphed = GraphedGenerator(gen, gen.init_state(2, seeds=[1, 2]))
    eager = gen.init_state(2, seeds=[1, 2])
    codes = torch.randint(0, 64, (12, 2, 4), device="cuda")
    for t in range(12):
        if t == 6:  # slot 1: a new session joins, no recapture
            gen.reset_slot(graphed.state, 1)
            gen.reset_slot(eager, 1)
        g = graphed.step(codes[t])
        e = gen.step(codes[t], eager)
        assert torch.equal(g.audio, e.audio) and torch.equal(g.text, e.text)
