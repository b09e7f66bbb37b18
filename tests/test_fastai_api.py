"""nfx as a fastai library (nfx.fastai): the README's examples run as written; AGC and per-sample
AGC stay correct with fastai's own GradientAccumulation, fine_tune and vision_learner; the CLI's
help states the defaults the code resolves."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use nfx from fastai"):]
    section = section[:section.index("\n## ", 5)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize("i", [0, 1])
def test_readme_fastai_examples_run_as_written(i, tmp_path, monkeypatch):
    """Executed from the README's text (not a copy), in a folder holding sample_data/."""
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NFX_CACHE_DIR", str(tmp_path / "cache"))
    code = _readme_examples()[i]
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, f"README.md (fastai example {i + 1})", "exec"), scope)
    learn = scope["learn"]
    assert "agc_clipped" in learn.recorder.metric_names
    agc = next(cb for cb in learn.cbs if type(cb).__name__ == "AGC")
    assert agc.n_calls > 0 and agc.lam is not None
    if i == 0:
        from fastai.learner import load_learner

        loaded = load_learner(tmp_path / "export.pkl")
        dcm = sorted((ROOT / "sample_data" / "dicom").rglob("*.dcm"))[0]
        label, _, probs = loaded.predict(dcm)
        assert label in ("glaucoma", "normal") and abs(float(probs.sum()) - 1) < 1e-5


def test_readme_examples_are_found():
    blocks = _readme_examples()
    assert len(blocks) == 2 and "nf_learner" in blocks[0] and "vision_learner" in blocks[1]


# ---- AGC with fastai's own callbacks -------------------------------------------------------------

def _png_dls(bs=4, size=32):
    from fastai.vision.all import ImageDataLoaders, Resize

    return ImageDataLoaders.from_folder(ROOT / "sample_data" / "png", valid_pct=0.2, seed=0, item_tfms=Resize(size),
                                        bs=bs, num_workers=0, shuffle=False)


class _Grads:
    """Captures the gradients just before AGC (order 10.5) and just after it (order 30) at every step."""

    def __init__(self):
        from fastai.callback.core import Callback

        outer = self
        self.before, self.after = [], []

        class Before(Callback):
            order = 10.5

            def before_step(self):
                outer.before.append({n: p.grad.detach().clone() for n, p in self.model.named_parameters()
                                     if p.grad is not None})

        class After(Callback):
            order = 30

            def before_step(self):
                outer.after.append({n: p.grad.detach().clone() for n, p in self.model.named_parameters()
                                    if p.grad is not None})

        self.cbs = [Before(), After()]


def test_agc_with_vision_learner_fine_tune_and_gradient_accumulation_clips_each_step_once():
    from fastai.vision.all import GradientAccumulation, vision_learner

    from nfx.fastai import AGC
    from nfx.train.agc import clip_reference_

    torch.manual_seed(0)
    dls = _png_dls(bs=4)
    agc = AGC(0.01)
    grads = _Grads()
    learn = vision_learner(dls, "test_nfnet", pretrained=False, cbs=[agc, GradientAccumulation(n_acc=8), *grads.cbs])
    learn.fine_tune(1, 1e-3, freeze_epochs=1)
    n_batches = len(dls.train)
    steps = 2 * (n_batches // 2)  # two fits (frozen, unfrozen), one step per 8 samples = 2 batches of 4
    assert len(grads.before) == len(grads.after) == steps == agc.n_calls
    head = {n for n, _ in learn.model[1].named_parameters()}
    head = {f"1.{n}" for n in head}
    names = dict(learn.model.named_parameters())
    changed = 0
    for before, after in zip(grads.before, grads.after):
        for n in head & before.keys():
            torch.testing.assert_close(after[n], before[n], rtol=0, atol=0)  # the head is never clipped
        body = [n for n in before if n not in head]
        ref = []
        for n in body:
            p = torch.nn.Parameter(names[n].detach().clone())
            p.grad = before[n].clone()
            ref.append((n, p))
        clip_reference_([p for _, p in ref], 0.01)
        for n, p in ref:
            torch.testing.assert_close(after[n], p.grad, rtol=1e-5, atol=1e-6)
            changed += not torch.equal(after[n], before[n])
    assert changed > 0  # something was clipped, so the comparison meant something
    assert not any(n.startswith("1.") for n, p in learn.model.named_parameters() if p in set(agc.params))


def test_agc_params_may_be_a_generator_and_auto_lambda_counts_gradient_accumulation():
    from fastai.vision.all import GradientAccumulation, vision_learner

    from nfx.config import auto_agc_clip
    from nfx.fastai import AGC

    dls = _png_dls(bs=4)
    learn = vision_learner(dls, "test_nfnet", pretrained=False)
    agc = AGC(params=learn.model[0].parameters())  # a generator: fastai users' habit
    learn.add_cbs([agc, GradientAccumulation(n_acc=32)])
    learn.fine_tune(1, 1e-3, freeze_epochs=1)
    assert agc.lam == auto_agc_clip(32)
    assert len(agc.params) == len(list(learn.model[0].parameters())) and agc.epoch_fraction is not None
    assert agc.epoch_fraction > 0  # clipped in the unfrozen epoch, not an empty list


def test_agc_refuses_a_model_whose_head_it_cannot_tell():
    from fastai.vision.all import Learner

    from nfx.errors import ModelError
    from nfx.fastai import AGC

    dls = _png_dls(bs=4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2))
    learn = Learner(dls, model, cbs=AGC())
    with pytest.raises(ModelError, match="cannot tell the head.*exclude="):
        learn.fit(1)
    learn = Learner(dls, model, cbs=AGC(exclude=model[1]))
    learn.fit(1)


# ---- per-sample AGC with fastai's GradientAccumulation ------------------------------------------

def _tiny_model(seed=0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("test_nfnet", num_classes=2)


def _first_step_grads(bs, n_acc, clip, seed=0):
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.optimizer import SGD
    from fastai.vision.all import GradientAccumulation

    from nfx.fastai import PerSampleAGC, nf_splitter

    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    ds = list(zip(x, y))
    dls = DataLoaders(DataLoader(ds, bs=bs, shuffle=False, drop_last=True), DataLoader(ds, bs=bs), device="cpu")
    cbs = [PerSampleAGC(clip)] + ([GradientAccumulation(n_acc=n_acc)] if n_acc else [])
    grads: dict = {}
    from fastai.callback.core import Callback

    class Capture(Callback):
        order = 30

        def before_step(self):
            if not grads:
                grads.update({n: p.grad.detach().clone() for n, p in self.model.named_parameters()})

    model = _tiny_model(seed)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=nf_splitter,
                    opt_func=lambda ps, lr: SGD(ps, lr, mom=0.0, wd=0.0), cbs=[*cbs, Capture()])
    learn.fit(1, 0.0)
    return grads, model, x, y


def test_per_sample_agc_with_fastai_gradient_accumulation_equals_one_big_batch_and_the_reference():
    from nfx.models.factory import head_and_body
    from nfx.train.persample import PerSampleAGC as Reference

    acc, _, _, _ = _first_step_grads(bs=2, n_acc=8, clip=0.01)  # 4 micro-batches of 2 → one step
    big, model, x, y = _first_step_grads(bs=8, n_acc=0, clip=0.01)
    for n in big:
        torch.testing.assert_close(acc[n], big[n], rtol=1e-4, atol=1e-7, msg=n)  # before: 4× too large
    ref_model = _tiny_model(0)
    _, body = head_and_body(ref_model)
    ref = Reference(ref_model, body, 0.01)
    ref.accumulate_(x, y, torch.nn.functional.cross_entropy)
    ref.flush_()
    for n, p in ref_model.named_parameters():
        torch.testing.assert_close(big[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)


@pytest.mark.parametrize("kind", ["AGC", "PerSampleAGC"])
def test_agc_callbacks_train_under_fastai_mixed_precision(kind):
    from fastai.vision.all import MixedPrecision

    import nfx.fastai as nf

    cb = getattr(nf, kind)()
    learn = nf.nf_learner(_png_dls(bs=4), "test_nfnet", pretrained=False, agc=None, cbs=[cb, MixedPrecision(amp_mode="bf16")])
    learn.fit(1, 1e-3)
    assert cb.n_calls > 0 and np.isfinite(learn.recorder.values[-1]).all()


def test_per_sample_agc_refuses_a_second_agc_on_the_learner():
    from fastai.vision.all import Learner

    from nfx.errors import ModelError
    from nfx.fastai import AGC, PerSampleAGC, nf_splitter

    learn = Learner(_png_dls(bs=4), _tiny_model(), splitter=nf_splitter, cbs=[AGC(), PerSampleAGC()])
    with pytest.raises(ModelError, match="both on this Learner"):
        learn.fit(1)


# ---- nf_learner, the DICOM block, the grouped splitter --------------------------------------------

def test_nf_learner_keeps_timm_head_exempts_gains_from_decay_and_normalises():
    from fastai.data.transforms import Normalize

    from nfx.fastai import AGC, NoDecay, nf_learner

    dls = _png_dls(bs=8)
    learn = nf_learner(dls, "test_nfnet", pretrained=False)
    from nfx.train.optim import FusedAdam

    learn.create_opt()
    assert isinstance(learn.opt, FusedAdam)  # fastai's Adam, fused steps (tests/test_optim.py)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in learn.model.modules())
    assert any(isinstance(cb, AGC) for cb in learn.cbs) and any(isinstance(cb, NoDecay) for cb in learn.cbs)
    assert any(isinstance(t, Normalize) for t in dls.after_batch.fs)
    learn.fine_tune(1, 1e-3, freeze_epochs=1)
    gains = [p for n, p in learn.model.named_parameters() if n.endswith(".gain")]
    assert gains and all(learn.opt.state[p].get("do_wd") is False for p in gains)
    convs = [p for n, p in learn.model.named_parameters() if n.endswith("conv.weight")]
    assert convs and all(learn.opt.state[p].get("do_wd", True) for p in convs)
    head = set(map(id, learn.model.get_classifier().parameters()))
    assert [id(p) for p in learn.opt.param_groups[-1]["params"]] == [id(p) for p in learn.model.parameters()
                                                                     if id(p) in head]
    from nfx.fastai import nf_learner as again

    bn = again(_png_dls(bs=8), "resnet18", pretrained=False)
    assert not any(isinstance(cb, AGC) for cb in bn.cbs)  # BatchNorm baselines: no AGC by default


def test_nf_learner_with_sgd_nesterov_fine_tunes_and_keeps_the_decay_exemptions():
    """`opt_func=sgd_nesterov` (`--optimizer sgd`): fastai's fine_tune drives it (mom scheduled),
    the gains stay exempt from decay, and the momentum buffers fill."""
    from nfx.fastai import nf_learner, sgd_nesterov
    from nfx.train.optim import ForeachSGD

    learn = nf_learner(_png_dls(bs=8), "test_nfnet", pretrained=False, opt_func=sgd_nesterov)
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.fine_tune(1, 0.05, freeze_epochs=1)
    assert isinstance(learn.opt, ForeachSGD)
    gains = [p for n, p in learn.model.named_parameters() if n.endswith(".gain")]
    assert gains and all(learn.opt.state[p].get("do_wd") is False for p in gains)
    assert all("sqr_avg" not in learn.opt.state[p] for p in gains)
    assert any((p.detach() - b).abs().max() > 0 for p, b in zip(learn.model.parameters(), before, strict=True))
    assert any(learn.opt.state[p]["grad_avg"].abs().sum() > 0 for p in gains)


def test_medical_image_block_decodes_like_nfx_and_uses_the_cache(tmp_path):
    from nfx.data.cache import preprocess
    from nfx.fastai import DecodeImage

    dcm = sorted((ROOT / "sample_data" / "dicom").rglob("*.dcm"))[0]
    plain = DecodeImage(48)(dcm)
    want = preprocess(dcm, 48, None, "squish", "stored", notes=[])
    assert tuple(plain.shape) == (3, 48, 48) and type(plain).__name__ == "TensorImage"
    np.testing.assert_allclose(plain.permute(1, 2, 0).numpy(), want, atol=1e-6)
    cached = DecodeImage(48, cache_dir=tmp_path)(dcm)
    assert list(tmp_path.rglob("*.npy"))
    np.testing.assert_allclose(cached.numpy(), plain.numpy(), atol=1e-3)  # float16 entries
    from nfx.errors import BadFileError

    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom")
    with pytest.raises(BadFileError, match="bad.dcm"):
        DecodeImage(48)(bad)


def test_grouped_splitter_keeps_patients_and_copies_on_one_side(tmp_path):
    from PIL import Image

    from nfx.fastai import GroupedSplitter

    files, labels, number = [], {}, {}
    for i in range(20):
        label = "a" if i % 2 else "b"
        (tmp_path / label).mkdir(exist_ok=True)
        yy, xx = np.mgrid[:64, :64]
        img = (127 + 120 * np.sin(xx / (3 + i) + i) * np.cos(yy / (4 + i % 5))).clip(0, 255).astype(np.uint8)
        p = tmp_path / label / f"img{i}.png"
        Image.fromarray(img).save(p)
        files.append(p)
        number[p] = i
        if i < 6:  # a re-saved copy: other size, JPEG
            q = tmp_path / label / f"img{i}_copy.jpg"
            Image.fromarray(img).resize((96, 96)).save(q, quality=85)
            files.append(q)
            number[q] = i
    for f in files:
        labels[f] = f.parent.name
    patient = {f: f"p{number[f] // 4}" for f in files}
    for seed in range(4):
        sp = GroupedSplitter(get_y=lambda f: labels[f], get_patient=lambda f: patient[f], valid_pct=0.3, seed=seed)
        train, valid = sp(files)
        assert sorted(train + valid) == list(range(len(files))) and valid
        side = {files[i]: "t" for i in train} | {files[i]: "v" for i in valid}
        for f in files:
            if "_copy" in f.name:
                assert side[f] == side[f.with_name(f.name.replace("_copy.jpg", ".png"))]
            same = [g for g in files if patient[g] == patient[f]]
            assert len({side[g] for g in same}) == 1
    no_copies = GroupedSplitter(get_y=lambda f: labels[f], copies=False)
    no_copies(files)
    assert no_copies.copy_of is None
    with_copies = GroupedSplitter(get_y=lambda f: labels[f])
    with_copies(files)
    group = dict(zip(files, with_copies.copy_of))
    copies = [f for f in files if "_copy" in f.name]
    assert len(copies) == 6
    assert all(group[f] == group[f.with_name(f.name.replace("_copy.jpg", ".png"))] for f in copies)


# ---- help texts state the defaults the code resolves ----------------------------------------------

def test_finetune_help_defaults_equal_the_resolved_config():
    import typer

    from nfx.cli import app
    from nfx.cli.train import FINETUNE_FLAGS
    from nfx.config import RunConfig, TrainConfig, resolve_schedule
    from nfx.records import DEFAULT_VOI_FALLBACK

    cmd = typer.main.get_command(app).commands["finetune"]
    cfg = RunConfig()
    fine, _ = resolve_schedule(TrainConfig(), from_scratch=False)
    scratch, _ = resolve_schedule(TrainConfig(), from_scratch=True)
    checked = 0
    for param in cmd.params:
        m = re.search(r"\[default: (.*?)\]", param.help or "")
        if not m or param.name not in FINETUNE_FLAGS:
            continue
        said = m.group(1)
        section, field = FINETUNE_FLAGS[param.name]
        if "fine-tuning" in said:
            a, b = re.fullmatch(r"(\S+) fine-tuning, (\S+) from scratch", said).groups()
            assert float(a) == getattr(fine, field) and float(b) == getattr(scratch, field), param.name
        elif field == "voi_fallback":
            assert said.startswith(DEFAULT_VOI_FALLBACK)
        elif said[:1].isdigit() or re.fullmatch(r"[\w.-]+", said):
            value = getattr(cfg if section == "top" else getattr(cfg, section), field)
            if value is None or isinstance(value, bool):
                continue  # resolved at run time ("the checkpoint's", "auto"): said in words
            assert said == str(value), (param.name, said, value)
        else:
            continue
        checked += 1
    assert checked >= 15, checked
    assert "lr/10" not in " ".join(p.help or "" for p in cmd.params)


def test_readme_options_table_defaults_equal_the_code():
    from nfx.cli.train import FINETUNE_FLAGS
    from nfx.config import RunConfig

    cfg = RunConfig()
    rows = re.findall(r"^\| `--([\w-]+)[^`]*` \| ([^|]*) \|", (ROOT / "README.md").read_text(), re.M)
    checked = 0
    for flag, default in rows:
        key = flag.replace("-", "_")
        if key not in FINETUNE_FLAGS:
            continue
        section, field = FINETUNE_FLAGS[key]
        value = getattr(cfg if section == "top" else getattr(cfg, section), field)
        if value is None or isinstance(value, bool) or not re.fullmatch(r"`?[\w.-]+`?", default.strip()):
            continue
        assert default.strip().strip("`") == str(value), (flag, default, value)
        checked += 1
    assert checked >= 8, checked


def test_importing_the_cli_does_not_import_fastai():
    import subprocess
    import sys

    code = "import sys, nfx.cli; print('fastai' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ},
                         timeout=120).stdout.split()
    assert out[0] == "False", out


def test_per_sample_agc_with_fine_tune_waits_for_the_body_and_lr_find_runs(tmp_path):
    from nfx.fastai import PerSampleAGC, nf_learner

    dls = _png_dls(bs=4)
    ps = PerSampleAGC()
    # path: lr_find saves a temporary model under learn.path/models (never inside sample_data/)
    learn = nf_learner(dls, "test_nfnet", pretrained=False, agc=None, cbs=ps, path=tmp_path)
    learn.fine_tune(1, 1e-3, freeze_epochs=1)
    assert ps.n_calls == len(dls.train)  # the unfrozen epoch only: with the body frozen it stays out of the way
    assert ps.impl == "one-pass" and ps.epoch_fraction is not None
    assert "agc_clipped" in learn.recorder.metric_names
    suggestion = learn.lr_find(num_it=6, show_plot=False)
    assert suggestion.valley > 0
