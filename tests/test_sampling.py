"""Seeded sampling: the fused Triton kernel against its PyTorch definition, and what the definition draws.

On CPU the kernel runs through Triton's interpreter (TRITON_INTERPRET=1, set in conftest); on a GPU natively.
"""

import math

import pytest
import torch

from models.kernels.sampling_triton import HAVE_TRITON, sample_fused
from models.lm.sampling import sample, sample_reference, top_k_mask

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="Triton is not installed")


def _inputs(rows: int, vocab: int, dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(dtype)
    seeds = torch.randint(0, 2**40, (rows,), generator=g)
    counters = torch.randint(0, 100_000, (rows,), generator=g)
    return logits.to(DEVICE), seeds.to(DEVICE), counters.to(DEVICE)


@needs_triton
@pytest.mark.parametrize(("vocab", "top_k", "dtype"), [
    (300, 25, torch.float32),  # not a power of two
    (2048, 250, torch.bfloat16),  # audio codebooks, Moshi's defaults; bf16 logits have many ties
    (1000, 0, torch.float32),  # no top-k
    (64, 1, torch.float32),  # top-1 is the argmax whatever the noise
    (4000, 25, torch.float16),
])
def test_fused_sampling_matches_reference(vocab, top_k, dtype):
    for trial in range(3):
        logits, seeds, counters = _inputs(24, vocab, dtype, seed=trial)
        stream = trial  # 1 is special-cased by Triton's integer specialization: cover it
        fused = sample_fused(logits, 0.8, top_k, seeds, counters, stream)
        ref = sample_reference(logits, 0.8, top_k, seeds, counters, stream)
        assert fused.dtype == torch.int64 and fused.shape == (24,)
        assert torch.equal(fused.cpu(), ref.cpu())
        if top_k == 1:
            assert torch.equal(ref.cpu(), logits.float().argmax(-1).cpu())


@needs_triton
def test_fused_sampling_reads_strided_rows_and_keeps_candidates():
    logits, seeds, counters = _inputs(8, 3 * 257, torch.float32, seed=5)
    view = logits.view(8, 3, 257)[:, 1]  # rows with stride 771, like text_logits[:, -1]
    fused = sample_fused(view, 1.3, 10, seeds, counters, 2)
    assert torch.equal(fused.cpu(), sample_reference(view.contiguous(), 1.3, 10, seeds, counters, 2).cpu())
    mask = top_k_mask(view.float(), 10)
    assert mask.gather(1, fused[:, None]).all()


def test_reference_draws_from_the_top_k_softmax():
    """Over many counters, token frequencies follow softmax(logits / T) renormalised over the top k."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    temperature, top_k, n = 0.9, 4, 20_000
    seeds = torch.full((n,), 7)
    tokens = sample_reference(logits.expand(n, -1), temperature, top_k, seeds, torch.arange(n))
    freq = torch.bincount(tokens, minlength=6).double() / n
    p = torch.softmax(logits[0, :top_k].double() / temperature, dim=0)
    assert freq[top_k:].sum() == 0
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq[:top_k] - p).abs() < 5 * sigma).all(), (freq, p)


def test_ties_at_the_top_k_boundary_are_all_candidates():
    logits = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0]])
    seen = {sample(logits, 5.0, 2, torch.tensor([1]), torch.tensor([i])).item() for i in range(300)}
    assert seen == {0, 1, 2, 3}


def test_seeded_sampling_is_deterministic_and_seed_dependent():
    logits, seeds, counters = _inputs(64, 512, torch.float32, seed=9)
    a = sample(logits, 1.0, 50, seeds, counters, 1)
    assert torch.equal(a, sample(logits, 1.0, 50, seeds, counters, 1))
    assert not torch.equal(a, sample(logits, 1.0, 50, seeds + 1, counters, 1))
    assert not torch.equal(a, sample(logits, 1.0, 50, seeds, counters, 2))
    assert math.isclose(sample(logits, 0.0, 0).float().mean().item(), logits.argmax(-1).float().mean().item())
