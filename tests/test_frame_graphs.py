"""The slot pool's whole-frame step in batch buckets (CUDA graphs on a GPU): padding rows change nothing."""

import numpy as np
import pytest
import torch

from agent.bundle import load_bundle
from agent.registry import resolve
from models.lm import LMGenerator
from streaming.frame_graphs import bucket_sizes
from streaming.slots import SlotPool

FRAME = 1920


def test_bucket_sizes():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(5) == [1, 2, 4, 5]
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 64]


def _drive(pool: SlotPool, frames: int = 10) -> list[tuple]:
    """Three sessions, one leaves mid-way and another joins its slot: every output, row by row."""
    rng = np.random.default_rng(0)
    for seed in (5, 6, 7):
        pool.add(seed)
    out = []
    for t in range(frames):
        if t == 4:
            pool.remove(0)
            pool.add(8)
        r = pool.step((0.1 * rng.standard_normal((pool.active, FRAME))).astype(np.float32))
        out.append((r.text.tolist(), r.valid.tolist(), r.audio_codes.tolist(), r.user_codes.tolist(),
                    np.round(r.pcm, 4).tolist()))
    return out


def _pools(device: str, **kwargs):
    bundle = load_bundle(resolve("default"), device=device)
    gen = LMGenerator(bundle.lm, bundle.sampling)
    return (SlotPool(bundle.codec, gen, 6, noise_floor=0.002, graphs=True, **kwargs),
            SlotPool(bundle.codec, gen, 6, noise_floor=0.002, graphs=False, **kwargs))


def test_bucketed_step_equals_exact_rows_on_cpu():
    """3 sessions run in bucket 4 of a 6-slot pool; the padding row and the free slots change no output."""
    bucketed, exact = _pools("cpu")
    assert bucketed._frames is not None and bucketed._frames.bucket(3) == 4
    assert _drive(bucketed) == _drive(exact)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_equal_the_same_buckets_eagerly(monkeypatch):
    """Replaying the captured graphs gives exactly what the bucketed step gives eagerly, with sessions
    joining and leaving and no recapture."""
    graphed, _ = _pools("cuda")
    captured = dict(graphed._frames._graphs)
    assert sorted(captured) == [1, 2, 4, 6]
    monkeypatch.setenv("NO_CUDA_GRAPH", "1")
    eager, _ = _pools("cuda")
    assert eager._frames is not None and not eager._frames._graphs
    assert _drive(graphed) == _drive(eager)
    assert graphed._frames._graphs == captured
