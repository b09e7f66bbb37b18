"""One-pass per-sample AGC (nfx.train.onepass): equal to the torch.func reference and to a
per-sample autograd loop on every NF family nfx supports, through both the materialising and the
ghost-norm path, with accumulation, class weights, fp16 loss scaling and bf16 autocast; a layer
it does not cover, or a tap whose forward disagrees with the module, falls back to vmap with a
note (or is refused when one-pass is forced); the taps never outlive a forward.
"""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch

from nfx.errors import ModelError
from nfx.train.onepass import OnePassPerSampleAGC
from nfx.train.persample import PerSampleAGC, reference_clipped_mean

CE = torch.nn.functional.cross_entropy
NCLS = 3


def _awkward(seed=0, **kw):
    """test_nfnet with skip-init gains (0-d) and SAME-padded convs, as in dm_nfnet_*."""
    from timm.models.nfnet import NormFreeNet, model_cfgs

    torch.manual_seed(seed)
    cfg = dataclasses.replace(model_cfgs["test_nfnet"], skipinit=True, same_padding=True)
    m = NormFreeNet(cfg, num_classes=NCLS, **kw)
    _nonzero_skipinit(m)
    return m.train()


def _nonzero_skipinit(m):
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "skipinit_gain" in n:
                p.fill_(0.5)  # 0 at init would zero the residual branches' gradients


def _timm(arch, seed=0):
    torch.manual_seed(seed)
    m = timm.create_model(arch, pretrained=False, num_classes=NCLS)
    _nonzero_skipinit(m)
    return m.train()


def _body(m):
    head = {id(p) for p in m.get_classifier().parameters()}
    return [p for p in m.parameters() if id(p) not in head]


def _data(n, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, NCLS, (n,), generator=g)


def _grads(m):
    out = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    return out


def _run(cls, m, x, y, lam, halves=1, sw=None, **kw):
    """Accumulate over `halves` micro-batches (weight 1/halves each), as MicroBatchAccumulation does."""
    m.zero_grad(set_to_none=True)
    clipper = cls(m, _body(m), lam, **kw)
    clipped = 0
    for xs, ys, ws in zip(x.chunk(halves), y.chunk(halves), (sw.chunk(halves) if sw is not None else [None] * halves)):
        n, units = clipper.accumulate_(xs, ys, CE, weight=1.0 / halves, sample_weight=ws)
        clipped += int(n)
    clipper.flush_()
    return _grads(m), clipped, units * halves


def _close(got, want, rtol=2e-4, atol_frac=2e-5):
    assert got.keys() == want.keys()
    for k in want:
        atol = atol_frac * float(want[k].abs().max()) + 1e-9
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=atol, msg=k)


FAMILIES = {
    "test_nfnet (skip-init, SAME)": _awkward,
    "nf_resnet26": lambda: _timm("nf_resnet26"),
    "nf_regnet_b0 (grouped, SE)": lambda: _timm("nf_regnet_b0"),
    "eca_nfnet_l0 (ECA conv1d, groups)": lambda: _timm("eca_nfnet_l0"),
    "dm_nfnet_f0 (SAME, skip-init, SE)": lambda: _timm("dm_nfnet_f0"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_equals_the_vmap_reference_with_accumulation_and_class_weights(family):
    m = FAMILIES[family]()
    x, y = _data(4)
    sw = torch.tensor([0.5, 1.5, 1.2, 0.8])  # per-sample loss weights, as class weights give
    lam = 0.02
    want, n_want, units = _run(PerSampleAGC, m, x, y, lam, halves=2, sw=sw)
    assert 0.02 < n_want / units < 0.98, "λ must clip some (sample, unit) pairs and leave others"
    for path in ("materialise", "ghost", "auto"):
        got, n_got, units_got = _run(OnePassPerSampleAGC, m, x, y, lam, halves=2, sw=sw, path=path)
        _close(got, want)
        assert units_got == units
        assert abs(n_got - n_want) <= max(2, units // 10000), path  # pairs right at the bound may tip


@pytest.mark.parametrize("make", [_awkward, lambda: _timm("nf_regnet_b0")], ids=["test_nfnet", "nf_regnet_b0"])
def test_equals_a_per_sample_autograd_loop(make):
    m = make()
    x, y = _data(3)
    got, n, _ = _run(OnePassPerSampleAGC, m, x, y, 0.02)
    assert n > 0
    _close(got, reference_clipped_mean(m, CE, x, y, _body(m), 0.02))


def test_clipping_off_equals_the_ordinary_backward_with_the_same_dropout_masks():
    m = _awkward(drop_rate=0.3, drop_path_rate=0.2)
    x, y = _data(4)
    torch.manual_seed(5)
    CE(m(x), y).backward()
    want = _grads(m)
    torch.manual_seed(5)  # one-pass runs the ordinary batched forward: the same masks
    got, n, _ = _run(OnePassPerSampleAGC, m, x, y, 1e6)
    assert n == 0
    _close(got, want)  # (with other masks they differ by ~50 % of the largest entry)


def test_fp16_loss_scale_is_folded_in_and_norms_are_taken_unscaled():
    m = _awkward()
    x, y = _data(3)
    plain, n_plain, _ = _run(OnePassPerSampleAGC, m, x, y, 0.02)
    op = OnePassPerSampleAGC(m, _body(m), 0.02)
    n, _ = op.accumulate_(x, y, CE, loss_scale=torch.tensor(1024.0))
    assert int(n) == n_plain  # the scale does not change which pairs are clipped
    _close({k: v / 1024 for k, v in _grads(m).items()}, plain)


def test_bf16_autocast_close_to_the_batch_gradient():
    m = _awkward()
    x, y = _data(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        CE(m(x), y).backward()
    want = _grads(m)
    op = OnePassPerSampleAGC(m, _body(m), 1e6)
    op.accumulate_(x, y, CE, autocast_dtype=torch.bfloat16)
    got = _grads(m)
    for k in want:
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k], want[k], rtol=0.1, atol=0.05 * float(want[k].abs().max()) + 1e-6)


def test_taps_never_outlive_a_forward():
    m = _awkward()
    x, y = _data(2)
    op = OnePassPerSampleAGC(m, _body(m), 0.02)
    keys = set(m.state_dict())
    op.accumulate_(x, y, CE)
    assert not any("forward" in mod.__dict__ or "skipinit_gain" in mod.__dict__ for mod in m.modules())
    op.install(2)
    assert sum("forward" in mod.__dict__ for mod in m.modules()) == len(op.layers)
    with pytest.raises(RuntimeError):
        m(torch.randn(2, 5, 32, 32))  # wrong channel count: the forward fails inside a tap
    op.remove()
    assert not any("forward" in mod.__dict__ or "skipinit_gain" in mod.__dict__ for mod in m.modules())
    assert set(m.state_dict()) == keys and op.check(x) is None


class _OwnConv(torch.nn.Conv2d):
    """A Conv2d subclass with its own forward: the taps must not assume the parent's maths."""

    def forward(self, x):
        return super().forward(x) * 2.0


def _small(conv=torch.nn.Conv2d, norm=False):
    torch.manual_seed(0)
    return torch.nn.Sequential(conv(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.GroupNorm(2, 4) if norm else torch.nn.Identity(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, NCLS))


def test_uncovered_layers_are_named():
    m = _small(_OwnConv, norm=True)
    body = list(m[0].parameters()) + list(m[2].parameters())
    missing = OnePassPerSampleAGC(m, body, 0.02).unsupported()
    assert len(missing) == 2 and "_OwnConv" in missing[0] and "GroupNorm" in missing[1]
    assert OnePassPerSampleAGC(m, list(m[0].parameters()), 0.02).unsupported() == ["0 (_OwnConv)"]


def test_check_catches_a_tap_whose_maths_differ():
    m = _awkward()
    x, _ = _data(2)
    op = OnePassPerSampleAGC(m, _body(m), 0.02)
    assert op.check(x) is None
    op.layers[3][1].scale *= 1.5  # as if timm changed the layer's formula
    assert "differ" in op.check(x)


def _callback(m, impl="auto"):
    from nfx.train.persample_cb import PerSampleAGCCallback

    notes = []
    cb = PerSampleAGCCallback(m, [p for p in m.parameters() if p is not m[-1].weight and p is not m[-1].bias],
                              0.02, impl=impl, note=notes.append)
    return cb, notes


def test_callback_falls_back_to_vmap_with_a_note_or_refuses_when_forced():
    cb, notes = _callback(_small(_OwnConv))
    assert cb.impl == "vmap" and len(notes) == 1 and "_OwnConv" in notes[0] and "vmap" in notes[0]
    cb, notes = _callback(_small())
    assert cb.impl == "one-pass" and notes == []
    with pytest.raises(ModelError, match="one-pass cannot be used.*_OwnConv"):
        _callback(_small(_OwnConv), impl="one-pass")
    cb, notes = _callback(_small(), impl="vmap")
    assert cb.impl == "vmap" and notes == []
