"""A fused kernel that fails on some setup (a Triton version it was not tried on, say) warns once and hands its
callers to the PyTorch path; where the fused path is forced (the kernel tests), the failure is raised."""

import pytest
import torch

import models.attention as attention
import models.kernels as kernels


@pytest.fixture(autouse=True)
def _forget_failures():
    yield
    kernels._failed.clear()


def test_failed_kernel_is_skipped_after_one_warning():
    assert not kernels.has_failed("k")
    with pytest.warns(RuntimeWarning, match="fused kernel k failed"):
        kernels.kernel_failed("k", RuntimeError("no such intrinsic"))
    assert kernels.has_failed("k") and not kernels.has_failed("other")
    with kernels.fused_path():  # forced (tests): tried regardless
        assert not kernels.has_failed("k")


def test_forced_fused_path_raises_the_failure():
    with kernels.fused_path(), pytest.raises(RuntimeError, match="boom"):
        kernels.kernel_failed("k", RuntimeError("boom"))
    assert "k" not in kernels._failed


def test_attention_falls_back_to_the_pytorch_path(monkeypatch):
    """The one-query attention kernel raising on its first call: the step still comes out right, from the
    PyTorch path, and the kernel is not tried again."""
    import models.kernels.attention_triton as attention_triton
    import models.kernels.rope_triton as rope_triton

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("compile error")

    monkeypatch.setattr(attention_triton, "_launch", broken)
    monkeypatch.setattr(attention, "fused_ok", lambda x: kernels._forced != "reference")  # as on a GPU
    monkeypatch.setattr(rope_triton, "rope_fused", attention.rope_rotate)  # its own kernel is tested elsewhere
    g = torch.Generator().manual_seed(0)
    want_cache = attention.KVCacheState.create(2, 2, 8, 6, 1)
    got_cache = attention.KVCacheState.create(2, 2, 8, 6, 1)
    for step in range(3):
        q, k, v = (torch.randn(2, 2, 1, 8, generator=g) for _ in range(3))
        with kernels.reference_path():
            want = attention.streaming_attention(q, k, v, want_cache, 6, 10_000.0)
        if step == 0:
            with pytest.warns(RuntimeWarning, match="decode_attention"):
                got = attention.streaming_attention(q, k, v, got_cache, 6, 10_000.0)
        else:
            got = attention.streaming_attention(q, k, v, got_cache, 6, 10_000.0)
        assert torch.equal(got, want) and torch.equal(got_cache.offset, want_cache.offset)
    assert len(calls) == 1


def test_decorated_kernel_runs_its_reference_after_a_failure():
    """`falls_back_to`: a failing wrapper warns once, returns the reference's result, then is not called again;
    its own input checks (ValueError) are not failures."""
    calls = []

    def reference(x):
        return x + 1

    @kernels.falls_back_to("flaky", reference)
    def fused(x):
        calls.append(x)
        if x < 0:
            raise ValueError("bad input")
        raise RuntimeError("PTX assembly aborted")

    with pytest.raises(ValueError):
        fused(-1)
    with pytest.warns(RuntimeWarning, match="flaky"):
        assert fused(1) == 2
    assert fused(2) == 3 and calls == [-1, 1]
    with kernels.fused_path(), pytest.raises(RuntimeError):  # forced (tests): the failure shows
        fused(3)
