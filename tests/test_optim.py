"""nfx's fused Adam gives the same updates as fastai's Adam (same state keys, same numbers), through
torch's fused kernel and through the foreach fallback used where a device has no fused kernel."""

import pytest
import timm
import torch
from fastai.optimizer import Adam

from nfx.train import optim
from nfx.train.optim import fused_adam


def _run(make_opt, steps=4, freeze_body_first=True):
    torch.manual_seed(0)
    m = timm.create_model("test_nfnet", num_classes=2)
    head = list(m.get_classifier().parameters())
    hid = {id(p) for p in head}
    body = [p for p in m.parameters() if id(p) not in hid]
    opt = make_opt([body, head], lr=1e-2)
    opt.set_hyper("lr", [1e-3, 1e-2])  # discriminative: body / head
    some = body[::3]
    for p in some:
        opt.state[p]["do_wd"] = False  # the gains/bias exemption nfx sets
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 2, (4,), generator=g)
    for i in range(steps):
        if freeze_body_first and i == 0:
            opt.freeze()  # first step head only → body params start with a different step count
        elif i == 1:
            opt.unfreeze()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return m.state_dict(), opt


@pytest.mark.parametrize("kernel", ["fused", "foreach"])
def test_fused_adam_matches_fastai_adam(kernel, monkeypatch):
    if kernel == "foreach":
        monkeypatch.setattr(optim, "_fused_available", lambda device: False)
    else:
        assert optim._fused_available(torch.device("cpu"))  # the path nfx takes on the CPU is the fused one
    a, opt_a = _run(Adam)
    b, opt_b = _run(fused_adam)
    for k in a:  # one update is ~1e-3 (lr); the kernels round in another order (~1 ulp a step, then
        # amplified through the forward pass), so agreement is to far below one update
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=3e-6, msg=k)
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert [set(s) for s in sa] == [set(s) for s in sb]
    assert [s.get("step") for s in sa] == [s.get("step") for s in sb]
    assert len({s.get("step") for s in sb}) == 2  # head and body really had different step counts


@pytest.mark.parametrize("kernel", ["fused", "foreach"])
def test_each_step_equals_fastai_adam_to_rounding(kernel, monkeypatch):
    """One tensor, weight decay on, gradients over four orders of magnitude, β₁ changed between
    steps (fit_one_cycle schedules it): every step within 2 ulp of fastai's (|p| ≤ ~4)."""
    if kernel == "foreach":
        monkeypatch.setattr(optim, "_fused_available", lambda device: False)
    torch.manual_seed(0)
    p0 = torch.randn(1000)
    grads = [torch.randn(1000) * s for s in (1e-3, 1e-2, 1.0, 1e-4, 0.1)]
    out = {}
    for name, make in (("fastai", Adam), ("nfx", fused_adam)):
        p = p0.clone().requires_grad_()
        opt = make([p], lr=1e-3, wd=0.1)
        seen = []
        for i, g in enumerate(grads):
            opt.set_hyper("mom", 0.95 - 0.02 * i)
            p.grad = g.clone()
            opt.step()
            seen.append(p.detach().clone())
        out[name] = seen
    for i, (a, b) in enumerate(zip(out["fastai"], out["nfx"])):
        torch.testing.assert_close(b, a, rtol=0, atol=5e-7, msg=f"step {i + 1}")
        assert (a - (out["fastai"][i - 1] if i else p0)).abs().max() > 1e-4  # the steps really moved p


def test_sgd_nesterov_equals_torch_sgd_with_decoupled_decay():
    """`--optimizer sgd`: each step is torch's SGD(nesterov=True, dampening 0) after fastai's
    decoupled decay p·(1 − lr·wd), with the momentum changed between steps (fit_one_cycle
    schedules it); exempt tensors (do_wd False) are not decayed."""
    from nfx.train.optim import sgd_nesterov

    torch.manual_seed(0)
    p0 = torch.randn(1000)
    grads = [torch.randn(1000) * s for s in (1e-2, 1.0, 1e-3, 0.1, 0.5)]
    lr, wd = 0.05, 0.1
    for do_wd in (True, False):
        p = p0.clone().requires_grad_()
        ref = p0.clone().requires_grad_()
        opt = sgd_nesterov([p], lr=lr, wd=wd)
        opt.state[p]["do_wd"] = do_wd
        tref = torch.optim.SGD([ref], lr=lr, momentum=0.9, nesterov=True)
        for i, g in enumerate(grads):
            mom = 0.95 - 0.02 * i
            opt.set_hyper("mom", mom)
            tref.param_groups[0]["momentum"] = mom
            p.grad, ref.grad = g.clone(), g.clone()
            before = ref.detach().clone()
            opt.step()
            with torch.no_grad():
                if do_wd:
                    ref.mul_(1 - lr * wd)
            tref.step()
            torch.testing.assert_close(p.detach(), ref.detach(), rtol=0, atol=1e-6, msg=f"step {i + 1}")
            assert (ref.detach() - before).abs().max() > 1e-4
    decayed = sgd_nesterov([q := p0.clone().requires_grad_()], lr=lr, wd=wd)
    q.grad = torch.zeros_like(q)
    decayed.step()
    torch.testing.assert_close(q.detach(), p0 * (1 - lr * wd))  # the decay really is applied when do_wd


def test_sgd_nesterov_matches_its_fastai_reference_on_a_network():
    """The foreach buckets give what fastai's per-tensor loop gives with the same update functions
    (discriminative lrs, freeze/unfreeze, do_wd exemptions), and keep the same state keys."""
    from fastai.optimizer import Optimizer, average_grad, weight_decay

    from nfx.train.optim import nesterov_step, sgd_nesterov

    def reference(params, lr, mom=0.9, wd=0.01):
        return Optimizer(params, [weight_decay, average_grad, nesterov_step], lr=lr, mom=mom, wd=wd)

    a, opt_a = _run(reference)
    b, opt_b = _run(sgd_nesterov)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=3e-6, msg=k)
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert [set(s) for s in sa] == [set(s) for s in sb]
    a0, _ = _run(reference, steps=0)
    assert any((a[k] - a0[k]).abs().max() > 1e-4 for k in a if a[k].is_floating_point())
