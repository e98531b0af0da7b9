import pytest
import torch

from models.kernels.mamba2_ref import ssd_chunked_ref, ssm_step_ref
from models.lm.config import MambaConfig
from models.lm.mamba2 import Mamba2Mixer


def _inputs(b=2, L=37, H=4, P=8, G=1, N=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, H, P, generator=g, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(b, L, H, generator=g, dtype=dtype) - 1)
    A = -torch.rand(H, generator=g, dtype=dtype) * 4 - 0.5
    B = torch.randn(b, L, G, N, generator=g, dtype=dtype)
    C = torch.randn(b, L, G, N, generator=g, dtype=dtype)
    D = torch.randn(H, generator=g, dtype=dtype)
    h0 = torch.randn(b, H, P, N, generator=g, dtype=dtype)
    return x, dt, A, B, C, D, h0


def _stepwise(x, dt, A, B, C, D, h0):
    state = h0.clone()
    ys = [ssm_step_ref(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D) for t in range(x.shape[1])]
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("chunk", [4, 8, 64])
def test_chunked_equals_stepwise_fp64(groups, chunk):
    x, dt, A, B, C, D, h0 = _inputs(G=groups)
    y_chunk, h_chunk = ssd_chunked_ref(x, dt, A, B, C, D, chunk, h0)
    y_step, h_step = _stepwise(x, dt, A, B, C, D, h0)
    assert (y_chunk - y_step).abs().max() < 1e-10
    assert (h_chunk - h_step).abs().max() < 1e-10


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_low_precision_against_fp64_oracle(dtype, tol):
    x, dt, A, B, C, D, h0 = _inputs(G=2)
    y_ref, h_ref = ssd_chunked_ref(x, dt, A, B, C, D, 8, h0)
    cast = [t.to(dtype) for t in (x, dt, A, B, C, D)]
    y_c, _ = ssd_chunked_ref(*cast, 8, h0.float())
    state = h0.float().clone()  # fp32 state, low-precision activations
    y_s = torch.stack([ssm_step_ref(state, cast[0][:, t], cast[1][:, t], cast[2], cast[3][:, t], cast[4][:, t],
                                    cast[5]) for t in range(x.shape[1])], 1)
    scale = y_ref.abs().max()
    assert ((y_c.double() - y_ref).abs().max() / scale) < tol
    assert ((y_s.double() - y_ref).abs().max() / scale) < tol
    assert ((state.double() - h_ref).abs().max() / h_ref.abs().max()) < tol


@pytest.mark.parametrize("groups", [1, 2])
def test_mixer_prefill_then_step_matches_all_steps(groups):
    torch.manual_seed(0)
    mixer = Mamba2Mixer(32, MambaConfig(d_state=8, headdim=8, ngroups=groups, chunk_size=4)).double()
    u = torch.randn(2, 11, 32, dtype=torch.float64)
    s_all = mixer.init_state(2, dtype=torch.float64)
    s_all.ssm = s_all.ssm.double()
    y_steps = torch.cat([mixer(u[:, t:t + 1], s_all) for t in range(11)], 1)
    s_mix = mixer.init_state(2, dtype=torch.float64)
    s_mix.ssm = s_mix.ssm.double()
    y_pre = mixer(u[:, :7], s_mix)  # chunked prefill
    y_post = torch.cat([mixer(u[:, t:t + 1], s_mix) for t in range(7, 11)], 1)
    assert (torch.cat([y_pre, y_post], 1) - y_steps).abs().max() < 1e-10
    assert (s_mix.ssm - s_all.ssm).abs().max() < 1e-10
