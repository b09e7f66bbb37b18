"""Per-sample AGC: equals batch AGC at batch size 1, equals the batch gradient with clipping off,
respects the bound per sample and unit, agrees with a straightforward torch.func reference and
with a per-sample autograd loop; composes with accumulation, fp16 loss scaling, class weights and
the fastai Learner (head never clipped, BatchNorm refused).

Model: timm's test_nfnet configuration with skip-init gains (0-d parameters) and SAME-padded
weight-standardised convs (ScaledStdConv2dSame, as in dm_nfnet_*), 32 px inputs.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.func import functional_call, grad, vmap

from nfx.errors import ConfigError, ModelError
from nfx.train import agc
from nfx.train.persample import (
    PerSampleAGC,
    clip_per_sample_,
    per_sample_grads,
    reference_clipped_mean,
)

SIZE, NCLS = 32, 3
CE = torch.nn.functional.cross_entropy


def _model(seed=0, **kw):
    from timm.models.nfnet import NormFreeNet, model_cfgs

    torch.manual_seed(seed)
    cfg = dataclasses.replace(model_cfgs["test_nfnet"], skipinit=True, same_padding=True)
    m = NormFreeNet(cfg, num_classes=NCLS, **kw)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "skipinit_gain" in n:
                p.fill_(0.5)  # 0 at init would zero the residual branches' gradients
    return m.train()


def _data(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randint(0, NCLS, (n,), generator=g)


def _body(m):
    head = {id(p) for p in m.get_classifier().parameters()}
    return [p for p in m.parameters() if id(p) not in head]


def _persample(m, x, y, clip, **kw):
    m.zero_grad(set_to_none=True)
    ps = PerSampleAGC(m, _body(m), clip, chunk=kw.pop("chunk", None))
    n, units = ps.accumulate_(x, y, CE, **kw)
    ps.flush_()
    return {k: p.grad.clone() for k, p in m.named_parameters()}, n, units


def _batch_grads(m, x, y, clip=None):
    m.zero_grad(set_to_none=True)
    CE(m(x), y).backward()
    if clip is not None:
        agc.clip_(_body(m), clip)
    return {k: p.grad.clone() for k, p in m.named_parameters()}


def _close(a, b, rtol=1e-4, atol=1e-6):
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


def test_model_has_the_awkward_parameters():
    m = _model()
    assert any(p.ndim == 0 for p in _body(m))  # skipinit_gain
    assert any(type(mod).__name__ == "ScaledStdConv2dSame" for mod in m.modules())


def test_batch_size_one_equals_batch_agc():
    m = _model()
    x, y = _data(1)
    got, n, units = _persample(m, x, y, 0.01)
    want = _batch_grads(m, x, y, clip=0.01)
    _close(got, want)
    assert int(n) > 0 and units == agc.count_units(_body(m))


def test_clipping_off_mean_equals_batch_gradient():
    m = _model()
    x, y = _data(5)
    got, n, _ = _persample(m, x, y, 1e6, chunk=2)
    _close(got, _batch_grads(m, x, y))
    assert int(n) == 0


def test_clipped_unit_norms_never_exceed_the_bound():
    m = _model()
    x, y = _data(4)
    names = [n for n, _ in m.named_parameters()]
    g = per_sample_grads(m, CE, x, y, names)
    before = {k: v.clone() for k, v in g.items()}
    body = {id(p) for p in _body(m)}
    weights = {n: p.detach() for n, p in m.named_parameters() if id(p) in body}
    lam = 0.02
    n = clip_per_sample_(g, weights, lam)
    assert int(n) > 0
    for name, w in weights.items():
        dims = tuple(range(1, w.ndim)) if w.ndim > 1 else None
        bound = lam * torch.linalg.vector_norm(w, dim=dims).clamp_min(1e-3)
        for i in range(x.shape[0]):
            gn = torch.linalg.vector_norm(g[name][i], dim=dims)
            gn0 = torch.linalg.vector_norm(before[name][i], dim=dims)
            assert torch.all(gn <= bound * (1 + 1e-5)), name
            untouched = gn0 <= bound
            assert torch.equal(torch.where(untouched, gn, gn0), gn0), name  # unclipped units unchanged
    head = [n for n, p in m.named_parameters() if id(p) not in body]
    for name in head:
        assert torch.equal(g[name], before[name])


def _vmap_reference(m, x, y, lam, eps=1e-3):
    """Straightforward torch.func reference: all per-sample gradients at once, clipped with the
    paper's formula sample by sample, averaged."""
    params = {n: p.detach() for n, p in m.named_parameters()}
    bufs = dict(m.named_buffers())

    def f(p, xi, yi):
        return CE(functional_call(m, (p, bufs), (xi[None],)), yi[None])

    g = vmap(grad(f), in_dims=(None, 0, 0), randomness="different")(params, x, y)
    body = {id(p) for p in _body(m)}
    out = {}
    for n, p in m.named_parameters():
        if id(p) not in body:
            out[n] = g[n].mean(0)
            continue
        rows = []
        for i in range(x.shape[0]):
            gi = g[n][i]
            w_norm = agc.unitwise_norm(p.detach()).clamp_min(eps)
            g_norm = agc.unitwise_norm(gi)
            rows.append(gi * torch.clamp(lam * w_norm / g_norm.clamp_min(1e-6), max=1.0))
        out[n] = torch.stack(rows).mean(0)
    return out


def test_agrees_with_torch_func_reference_and_autograd_loop():
    m = _model()
    x, y = _data(3)
    got, _, _ = _persample(m, x, y, 0.01, chunk=2)
    _close(got, _vmap_reference(m, x, y, 0.01))
    _close(got, reference_clipped_mean(m, CE, x, y, _body(m), 0.01))


def test_chunk_size_does_not_change_the_result():
    m = _model()
    x, y = _data(5)
    a, _, _ = _persample(m, x, y, 0.01, chunk=1)
    b, _, _ = _persample(m, x, y, 0.01, chunk=5)
    c, _, _ = _persample(m, x, y, 0.01)  # automatic
    _close(a, b)
    _close(c, b)


def test_weighted_calls_accumulate_the_mean_over_the_window():
    m = _model()
    x, y = _data(4)
    whole, _, _ = _persample(m, x, y, 0.01)
    m.zero_grad(set_to_none=True)
    ps = PerSampleAGC(m, _body(m), 0.01)
    ps.accumulate_(x[:2], y[:2], CE, weight=0.5)
    ps.accumulate_(x[2:], y[2:], CE, weight=0.5)
    _close({k: p.grad for k, p in m.named_parameters()}, whole)


def test_fp16_loss_scale_is_folded_in_for_the_grad_scaler():
    m = _model()
    x, y = _data(3)
    plain, _, _ = _persample(m, x, y, 0.01)
    scaled, _, _ = _persample(m, x, y, 0.01, loss_scale=torch.tensor(1024.0))
    _close({k: v / 1024 for k, v in scaled.items()}, plain, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_and_non_fp32_parameters():
    m = _model()
    x, y = _data(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _batch_grads(m, x, y)
    got, _, _ = _persample(m, x, y, 1e6, autocast_dtype=torch.bfloat16)
    for k in want:
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k], want[k], rtol=0.1, atol=0.05 * float(want[k].abs().max()) + 1e-6)
    # bf16 parameters: accumulation happens in a float32 side buffer, flushed into p.grad
    mb = _model().to(torch.bfloat16)
    ps = PerSampleAGC(mb, _body(mb), 0.01)
    ps.accumulate_(x.bfloat16(), y, CE, weight=0.5)
    ps.accumulate_(x.bfloat16(), y, CE, weight=0.5)
    assert all(p.grad is None for p in mb.parameters())
    assert all(b.dtype == torch.float32 for _, b in ps._side.values())
    ps.flush_()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in mb.parameters())


def test_dropout_and_drop_path_run_with_independent_masks():
    m = _model(drop_rate=0.3, drop_path_rate=0.2)
    x, y = _data(3)
    got, _, _ = _persample(m, x, y, 0.01)
    assert all(torch.isfinite(v).all() for v in got.values())


def test_batchnorm_models_are_refused_with_the_reason():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                            torch.nn.LazyLinear(2))
    with pytest.raises(ModelError, match="BatchNorm.*batch-mates"):
        PerSampleAGC(m, list(m.parameters()), 0.01)


# -- the fastai wiring ------------------------------------------------------------------------

def _learner(n, bs, accum, clip, mode="per-sample", class_weights=None, seed=0, impl="auto"):
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.optimizer import SGD

    from nfx.train.learner import build_learner

    x, y = _data(n, seed + 1)
    ds = list(zip(x, y))
    dls = DataLoaders(DataLoader(ds, bs=bs, shuffle=False, drop_last=True),
                      DataLoader(ds, bs=bs, shuffle=False), device=torch.device("cpu"))
    return build_learner(dls, _model(seed), num_classes=NCLS, wd=0.0, precision="fp32", accum=accum,
                         agc=clip, device=torch.device("cpu"), class_weights=class_weights,
                         opt_func=lambda ps, lr: SGD(ps, lr, mom=0.0, wd=0.0), agc_mode=mode,
                         persample_impl=impl)


def _grads_at_first_step(w):
    from fastai.callback.core import Callback

    grads = {}

    class Capture(Callback):
        order = 30  # after MixedPrecision / AGC

        def before_step(self):
            if not grads:
                grads.update({n: p.grad.detach().clone() for n, p in self.model.named_parameters()})

    w.learn.add_cb(Capture())
    w.learn.unfreeze()
    w.learn.fit(1, 0.0)
    return grads


@pytest.mark.parametrize("impl", ["one-pass", "vmap"])
def test_learner_per_sample_with_accumulation_equals_one_big_batch(impl):
    from nfx.train.callbacks import AGCCallback
    from nfx.train.persample_cb import PerSampleAGCCallback

    big = _learner(4, bs=4, accum=1, clip=0.01, impl=impl)
    acc = _learner(4, bs=2, accum=2, clip=0.01, impl=impl)
    assert isinstance(big.agc_cb, PerSampleAGCCallback) and big.agc_cb.impl == acc.agc_cb.impl == impl
    assert not any(isinstance(cb, AGCCallback) for cb in big.learn.cbs)  # never clipped twice
    g_big, g_acc = _grads_at_first_step(big), _grads_at_first_step(acc)
    _close(g_acc, g_big, rtol=1e-4, atol=1e-7)
    assert acc.agc_cb.n_calls == 2 and acc.agc_cb.epoch_fraction > 0
    # and equal to the pure function on the whole batch
    m = _model()
    x, y = _data(4, 1)
    want, _, _ = _persample(m, x, y, 0.01)
    _close(g_big, want)


@pytest.mark.parametrize("impl", ["one-pass", "vmap"])
def test_learner_head_gets_the_plain_mean_gradient(impl):
    ps = _grads_at_first_step(_learner(4, bs=4, accum=1, clip=1e-4, impl=impl))
    plain = _grads_at_first_step(_learner(4, bs=4, accum=1, clip=None, mode="batch"))
    head = {n for n, _ in _model().named_parameters() if n.startswith("head.fc")}
    assert head
    for n in head:
        torch.testing.assert_close(ps[n], plain[n], rtol=1e-4, atol=1e-6)
    assert sum(not torch.allclose(ps[n], plain[n]) for n in plain if n not in head) > 10


@pytest.mark.parametrize("impl", ["one-pass", "vmap"])
def test_learner_clipping_off_equals_weighted_batch_gradient(impl):
    cw = [1.0, 3.0, 0.5]
    ps = _grads_at_first_step(_learner(6, bs=6, accum=1, clip=1e6, class_weights=cw, impl=impl))
    plain = _grads_at_first_step(_learner(6, bs=6, accum=1, clip=None, mode="batch", class_weights=cw))
    _close(ps, plain)


@pytest.mark.parametrize("impl", ["one-pass", "vmap"])
def test_learner_frozen_body_uses_the_normal_backward(impl):
    w = _learner(4, bs=4, accum=1, clip=0.01, impl=impl)
    w.learn.freeze()
    w.learn.fit(1, 0.1)
    assert w.agc_cb.n_calls == 0
    assert torch.is_grad_enabled()


def test_per_sample_mode_needs_agc():
    with pytest.raises(ConfigError, match="per-sample"):
        _learner(4, bs=4, accum=1, clip=None)


def test_learner_one_pass_and_vmap_agree_with_class_weights_and_accumulation():
    cw = [1.0, 3.0, 0.5]
    one = _grads_at_first_step(_learner(6, bs=3, accum=2, clip=0.01, class_weights=cw, impl="one-pass"))
    ref = _grads_at_first_step(_learner(6, bs=3, accum=2, clip=0.01, class_weights=cw, impl="vmap"))
    _close(one, ref)
    plain = _grads_at_first_step(_learner(6, bs=3, accum=2, clip=None, mode="batch", class_weights=cw))
    assert sum(not torch.allclose(one[n], plain[n], rtol=1e-3) for n in plain) > 10  # clipping did act


def test_learner_default_is_one_pass():
    assert _learner(4, bs=4, accum=1, clip=0.01).agc_cb.impl == "one-pass"
