"""AGC math: the grouped implementation equals the plain per-parameter formula."""

import pytest
import torch

from nfx.train import agc


def _params(dtype=torch.float32, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(), (7,), (5, 3), (4, 3, 3, 3), (6, 1, 1, 1), (1,), (16, 8)]
    ps = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=g).to(dtype))
        if len(s) == 4 and channels_last:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
        # mixture of huge and tiny gradients so some units clip and some don't
        scale = torch.rand(s[:1] if s else (), generator=g) * 2
        grad = torch.randn(s, generator=g) * (scale.reshape(scale.shape + (1,) * (len(s) - 1)) if s else scale)
        p.grad = grad.to(dtype)
        if len(s) == 4 and channels_last:
            p.grad = p.grad.contiguous(memory_format=torch.channels_last)
        ps.append(p)
    # a zero-initialised parameter (e.g. skipinit_gain): the eps floor must let it move
    z = torch.nn.Parameter(torch.zeros((), dtype=dtype))
    z.grad = torch.tensor(0.5).to(dtype)
    ps.append(z)
    return ps


def _clone(ps):
    out = []
    for p in ps:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = p.grad.clone()
        out.append(q)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("clip", [0.01, 0.16, 1.0])
def test_grouped_equals_reference(dtype, channels_last, clip):
    a = _params(dtype, channels_last)
    b = _clone(a)
    n_fast, units = agc.clip_(a, clip)
    n_ref = agc.clip_reference_(b, clip)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    for p, q in zip(a, b):
        assert p.grad.dtype == dtype
        torch.testing.assert_close(p.grad.float(), q.grad.float(), rtol=tol, atol=tol)
    assert int(n_fast) == n_ref
    assert units == agc.count_units(a)
    assert n_ref > 0
    if clip >= 0.16:
        assert n_ref < units  # the fixture exercises both branches


def test_reference_matches_formula_by_hand():
    """One 2-unit linear weight, computed by hand."""
    p = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))  # unit norms 5 and 0 (→ eps)
    p.grad = torch.tensor([[30.0, 40.0], [1.0, 0.0]])  # grad norms 50 and 1
    agc.clip_([p], clip_factor=0.1, eps=1e-3)
    # unit 0: max = 0.1·5 = 0.5 < 50 → scaled to norm 0.5; unit 1: max = 0.1·1e-3 → norm 1e-4
    torch.testing.assert_close(p.grad[0], torch.tensor([0.3, 0.4]))
    torch.testing.assert_close(p.grad[1], torch.tensor([1e-4, 0.0]))


def test_unclipped_units_untouched_and_bound_respected():
    ps = _params()
    before = [p.grad.clone() for p in ps]
    agc.clip_(ps, 0.05)
    for p, g0 in zip(ps, before):
        w = agc.unitwise_norm(p.detach()).clamp_min(1e-3)
        gn0 = agc.unitwise_norm(g0)
        gn = agc.unitwise_norm(p.grad)
        bound = 0.05 * w
        assert torch.all(gn <= bound * (1 + 1e-5) + 1e-12) | torch.all(gn0 <= bound)
        untouched = gn0 <= bound
        assert torch.allclose(torch.where(untouched, gn, gn0), gn0)


def test_params_without_grad_are_skipped():
    p = torch.nn.Parameter(torch.randn(3, 3))
    n, units = agc.clip_([p], 0.01)
    assert n is None and units == 0
