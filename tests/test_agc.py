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


def test_fp32_is_bitwise_identical_to_reference_on_a_real_parameter_set():
    """test_nfnet's body (head excluded): 1-d gains/biases and 4-d weight-standardised convs."""
    import timm

    torch.manual_seed(0)
    m = timm.create_model("test_nfnet", num_classes=2)
    head = {id(p) for p in m.get_classifier().parameters()}
    body = [p for p in m.parameters() if id(p) not in head]
    for p in body:
        p.grad = torch.randn_like(p) * 0.05
    ref = _clone(body)
    n_fast, units = agc.clip_(body, 0.05)
    n_ref = agc.clip_reference_(ref, 0.05)
    assert int(n_fast) == n_ref > 0 and units == agc.count_units(body)
    for p, q in zip(body, ref):
        assert torch.equal(p.grad, q.grad)


def test_mixed_dtypes_in_one_call_and_exact_bf16():
    a = _params(torch.float32, seed=1) + _params(torch.bfloat16, channels_last=True, seed=2)
    b = _clone(a)
    n_fast, _ = agc.clip_(a, 0.05)
    assert int(n_fast) == agc.clip_reference_(b, 0.05)
    for p, q in zip(a, b):
        assert p.grad.dtype == q.grad.dtype
        assert torch.equal(p.grad, q.grad)


def test_plan_is_reused_rebound_for_new_grads_and_rebuilt_for_new_params():
    ps = _params(seed=3)
    clipper = agc.Clipper()
    clipper(ps, 0.05)
    first = clipper._plan
    for p in ps:  # a set_to_none optimizer (nfx's own): new gradient tensors next step
        p.grad = torch.randn_like(p)
    ref = _clone(ps)
    clipper(ps, 0.05)
    assert clipper._plan is first  # the plan is kept, its gradient lists rebound to the new tensors
    agc.clip_reference_(ref, 0.05)
    for p, q in zip(ps, ref):
        assert torch.equal(p.grad, q.grad)  # the new gradients were the ones clipped
    before = [p.grad for p in ps]
    clipper(ps, 0.05)  # reused plan still writes into the live gradient tensors
    assert clipper._plan is first
    assert all(p.grad is g for p, g in zip(ps, before))
    some = ps[1:5]  # another parameter list: a new plan
    for p in some:
        p.grad = torch.randn_like(p) * 3
    ref = _clone(some)
    clipper(some, 0.05)
    assert clipper._plan is not first
    agc.clip_reference_(ref, 0.05)
    for p, q in zip(some, ref):
        assert torch.equal(p.grad, q.grad)


def test_clip_state_is_per_clipper_not_global():
    import gc
    import weakref

    ps = _params(seed=5)
    agc.clip_(ps, 0.05)
    ref = weakref.ref(ps[0])
    del ps
    gc.collect()
    assert ref() is None  # no module-level cache keeps an earlier fit's parameters alive


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    a = _params(seed=4)
    b = _clone(a)
    clipper = agc.Clipper(compile=True)
    n_fast, _ = clipper(a, 0.05)
    assert int(n_fast) == agc.clip_reference_(b, 0.05)
    for p, q in zip(a, b):
        assert torch.equal(p.grad, q.grad)
    assert clipper.compile_broken
    assert not agc.Clipper(compile=True).compile_broken  # another run tries again
