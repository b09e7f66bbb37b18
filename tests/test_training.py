"""Training wiring with a real fastai Learner and timm's test_nfnet: accumulation equals a large
batch (AGC included), AGC runs once per optimizer step, the head is never clipped, freeze()
really freezes the body."""

from __future__ import annotations

import timm
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.optimizer import SGD

from nfx.models.factory import head_and_body
from nfx.train.learner import build_learner

SIZE = 32


class TensorDS(torch.utils.data.Dataset):
    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, SIZE, SIZE, generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _model(seed=0):
    torch.manual_seed(seed)
    m = timm.create_model("test_nfnet", num_classes=2)
    # make every parameter non-trivial (skipinit gains start at 0) so all layers get gradients
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "skipinit_gain" in n:
                p.fill_(0.5)
    return m


def _learner(n, bs, accum, agc, seed=0, lr=0.1):
    ds = TensorDS(n, seed)
    dls = DataLoaders(DataLoader(ds, bs=bs, shuffle=False, drop_last=True),
                      DataLoader(ds, bs=bs, shuffle=False), device=torch.device("cpu"))
    w = build_learner(dls, _model(seed), num_classes=2, wd=0.0, precision="fp32", accum=accum,
                      agc=agc, device=torch.device("cpu"), opt_func=lambda ps, lr: SGD(ps, lr, mom=0.0, wd=0.0))
    return w


def _fit_one_epoch(w, lr=0.1):
    w.learn.unfreeze()
    w.learn.fit(1, lr)
    return {k: v.detach().clone() for k, v in w.learn.model.state_dict().items()}


def test_accumulating_4x2_equals_batch_of_8_with_agc():
    start = {k: v.clone() for k, v in _model().state_dict().items()}
    big = _learner(8, bs=8, accum=1, agc=0.01)
    acc = _learner(8, bs=2, accum=4, agc=0.01)
    w_big, w_acc = _fit_one_epoch(big), _fit_one_epoch(acc)
    moved = [k for k in start if not torch.equal(start[k], w_big[k])]
    assert len(moved) > 10  # the update really happened
    for k in start:
        torch.testing.assert_close(w_acc[k], w_big[k], rtol=1e-4, atol=1e-6, msg=k)
    assert big.agc_cb.n_calls == 1 and acc.agc_cb.n_calls == 1
    assert acc.accum_cb.n_steps == 1
    assert acc.agc_cb.epoch_fraction is not None and acc.agc_cb.epoch_fraction > 0  # λ=0.01 clips


def test_agc_calls_equal_optimizer_steps_with_partial_window():
    # 12 micro-batches, accum 5 → windows of 5, 5, 2 → 3 optimizer steps per epoch
    w = _learner(24, bs=2, accum=5, agc=0.1)
    steps = []
    orig = w.learn.opt.step

    def counting_step(*a, **k):
        steps.append(1)
        return orig(*a, **k)

    w.learn.opt.step = counting_step
    w.learn.unfreeze()
    w.learn.fit(2, 0.01)
    assert len(steps) == 6
    assert w.agc_cb.n_calls == 6
    assert w.accum_cb.n_steps == 6


def test_partial_window_is_mean_of_its_samples():
    """Epoch-end rule: 5 micro-batches with accum 4 → windows of 4 and 1. The last, shorter
    window steps with the mean gradient over its own samples (checked by hand)."""
    w = _learner(10, bs=2, accum=4, agc=None)
    captured = {}
    from fastai.callback.core import Callback

    class GradSnapshot(Callback):
        order = 20

        def before_step(self):
            captured[self.iter] = {n: p.grad.detach().clone() for n, p in self.model.named_parameters()
                                   if p.grad is not None}

    w.learn.add_cb(GradSnapshot())
    w.learn.unfreeze()
    model_before_last = None

    class SnapshotWeights(Callback):
        order = 0

        def before_batch(self):
            nonlocal model_before_last
            if self.training and self.iter == 4:
                model_before_last = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    w.learn.add_cb(SnapshotWeights())
    w.learn.fit(1, 0.01)
    assert sorted(captured) == [3, 4]  # the full window ends at iter 3, the partial one at iter 4
    # expected gradient of the last window: mean loss gradient over the last 2 samples
    m = _model()
    m.load_state_dict({**m.state_dict(), **model_before_last}, strict=False)
    ds = TensorDS(10)
    loss = torch.nn.functional.cross_entropy(m(ds.x[8:10]), ds.y[8:10])
    loss.backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(captured[4][n], p.grad, rtol=1e-4, atol=1e-7, msg=n)


def test_head_is_never_clipped():
    """With a tiny λ, body gradients are clipped but the head's are exactly the unclipped ones."""
    from fastai.callback.core import Callback

    grads = {}

    class Capture(Callback):
        order = 30  # after AGC (11)

        def __init__(self, key):
            self.key = key

        def before_step(self):
            grads[self.key] = {n: p.grad.detach().clone() for n, p in self.model.named_parameters()}

    for key, agc in (("off", None), ("on", 1e-4)):
        w = _learner(8, bs=8, accum=1, agc=agc)
        w.learn.add_cb(Capture(key))
        w.learn.unfreeze()
        w.learn.fit(1, 0.0)
    head_names = {n for n, p in _model().named_parameters() if n.startswith("head.fc")}
    assert head_names
    body_clipped = 0
    for n in grads["off"]:
        if n in head_names:
            assert torch.equal(grads["on"][n], grads["off"][n]), n
        elif not torch.equal(grads["on"][n], grads["off"][n]):
            body_clipped += 1
    assert body_clipped > 10
    # and the AGC callback's parameter list excludes the head by identity
    w = _learner(8, bs=8, accum=1, agc=0.01)
    head, _ = head_and_body(w.learn.model)
    assert not {id(p) for p in head} & {id(p) for p in w.agc_cb.params}


def test_freeze_really_freezes_the_body():
    w = _learner(8, bs=4, accum=1, agc=0.1)
    model = w.learn.model
    head, body = head_and_body(model)
    before = [p.detach().clone() for p in model.parameters()]
    w.learn.freeze()
    assert all(not p.requires_grad for p in body)
    assert all(p.requires_grad for p in head)
    w.learn.fit(1, 0.1)
    after = list(model.parameters())
    head_ids = {id(p) for p in head}
    for p0, p in zip(before, after):
        if id(p) in head_ids:
            continue
        assert torch.equal(p0, p.detach())
    assert any(not torch.equal(p0, p.detach()) for p0, p in zip(before, after) if id(p) in head_ids)


def test_no_batchnorm_added_and_gains_not_decayed():
    w = _learner(8, bs=4, accum=1, agc=0.1)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in w.learn.model.modules())
    names = {id(p): n for n, p in w.learn.model.named_parameters()}
    for p in w.learn.model.parameters():
        n = names[id(p)]
        do_wd = w.learn.opt.state[p].get("do_wd", True)
        if n.endswith((".gain", "skipinit_gain", ".bias")):
            assert do_wd is False, n
        elif n.endswith(".weight") and p.ndim > 1:
            assert do_wd is True, n
