"""nfx for fastai users: the pieces the CLI is built from, with fastai's conventions.

    from nfx.fastai import AGC, PerSampleAGC, nf_learner, MedicalImageBlock, GroupedSplitter

- `AGC(clip_factor="auto")`: Adaptive Gradient Clipping once per optimizer step, the head left
  alone (found by identity), λ from the real effective batch, the clip fraction as a Recorder
  column. Correct with fastai's GradientAccumulation, MixedPrecision and fine_tune.
- `PerSampleAGC(clip_factor="auto")`: each sample's gradient clipped before the mean; correct
  with fastai's GradientAccumulation (the window's mean, as without it), MixedPrecision and
  fine_tune's frozen epochs. Refuses BatchNorm models and being combined with `AGC`.
- `nf_learner(dls, arch)`: a fastai Learner around a timm model with timm's own head (no
  BatchNorm added), a body/head splitter (so `fine_tune`, `freeze`, `lr_find` work), nfx's
  weight-decay exemptions, the pretrained normalisation and `AGC` for NF models.
- `MedicalImageBlock(size)`: a DataBlock block decoding DICOM (VOI, rescale, photometric,
  frames), 16-bit PNG/TIFF and ordinary images through nfx's decoder, resized by nfx's policy,
  optionally through nfx's decoded-image cache.
- `GroupedSplitter(get_y)`: a validation split grouped by patient and by copies of one image,
  stratified by label.

Importing this module imports fastai (about 5 s); nothing else in nfx's CLI needs it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback
from fasttransform import Transform

from nfx.train.callbacks import (
    AGCCallback,
    add_column,
    body_params,
    check_clip_factor,
    effective_batch,
    head_params,
    nan_if_none,
    resolve_clip,
)
from nfx.train.optim import fused_adam, sgd_nesterov
from nfx.train.persample_cb import PerSampleAGCCallback

__all__ = ["AGC", "PerSampleAGC", "NoDecay", "nf_learner", "nf_splitter", "head_params", "effective_batch",
           "DecodeImage", "MedicalImageBlock", "GroupedSplitter", "dicom_patient", "fused_adam",
           "sgd_nesterov"]


class AGC(AGCCallback):
    """Adaptive Gradient Clipping (Brock et al. 2021) as a fastai callback, in GradientClip's slot.

    `AGC()` is enough: λ = "auto" is chosen in before_fit from the effective batch (batch size ×
    GradientAccumulation × processes; nfx.config.auto_agc_clip), the head is found by identity
    and never clipped, and the fraction of units clipped per epoch is the Recorder column
    `agc_clipped`. `params` (any iterable, generators included) or `exclude` (a module or
    parameters) choose by hand. With fastai's GradientAccumulation it clips the accumulated
    gradient once per optimizer step."""


class PerSampleAGC(PerSampleAGCCallback):
    """Per-sample AGC as a fastai callback: each sample's gradient clipped unit-wise before the
    mean (nfx's one-pass implementation, the torch.func one as a fallback).

    Set up in before_fit from the Learner: the head (as `AGC` finds it) is not clipped, λ "auto"
    comes from the effective batch, and the weight of each micro-batch follows the accumulation
    callback in use (fastai's GradientAccumulation or nfx's), so an accumulated step's gradient
    is the mean over its samples exactly as without accumulation."""

    def __init__(self, clip_factor: float | str = "auto", eps: float = 1e-3, *, params: Any = None,
                 exclude: Any = None, impl: str = "auto", chunk: int | None = None):
        check_clip_factor(clip_factor)
        self.settings = dict(clip_factor=clip_factor, eps=eps, impl=impl, chunk=chunk, exclude=exclude,
                             params=None if params is None else list(params))
        self.impl, self.n_calls, self.epoch_fraction = impl, 0, None

    def before_fit(self) -> None:
        from nfx.errors import ModelError

        if any(isinstance(cb, AGCCallback) for cb in self.learn.cbs):
            raise ModelError("PerSampleAGC and AGC are both on this Learner: per-sample AGC already clips; "
                             "remove the AGC callback")
        s = self.settings
        params = s["params"] if s["params"] is not None else body_params(self.learn, s["exclude"])
        lam = resolve_clip(s["clip_factor"], self.learn)
        PerSampleAGCCallback.__init__(self, self.learn.model, params, lam, eps=s["eps"], chunk=s["chunk"],
                                      impl=s["impl"], note=_warn)
        self.lam = lam
        add_column(self.learn, "agc_clipped", self.column_value)

    def column_value(self) -> float:
        """This epoch's fraction of (sample, unit) pairs clipped (NaN before any step): the Recorder column."""
        return nan_if_none(self.epoch_fraction)


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)


class NoDecay(Callback):
    """Exempts biases, gains, skip-init gains and normalisation parameters from weight decay
    (DeepMind's NF-net practice), whenever an optimizer is (re)created: fastai's own
    `wd_bn_bias=False` knows BatchNorm and biases only, not the gains of NF networks."""

    order = 0

    def before_fit(self) -> None:
        from nfx.models.factory import no_decay_params

        if self.learn.opt is None:  # get_preds / predict also run before_fit, with no optimizer
            return
        for p in no_decay_params(self.learn.model):
            self.learn.opt.state[p]["do_wd"] = False


def nf_splitter(model: torch.nn.Module) -> list[list[torch.Tensor]]:
    """fastai splitter for a timm model: [body, head], the head found by timm's get_classifier()."""
    from nfx.models.factory import head_and_body

    head, body = head_and_body(model)
    return [body, head]


def nf_learner(dls: Any, arch: str = "dm_nfnet_f0", *, pretrained: bool = True, weights: str | Path | None = None,
               n_out: int | None = None, agc: float | str | None = "auto", loss_func: Any = None,
               metrics: Any = None, wd: float = 1e-2, normalize: bool = True, cbs: Any = None, **kwargs: Any):
    """A fastai `Learner` for a timm model (NFNets first): timm's own classifier as the head,
    the splitter [body, head] (fine_tune / freeze train the head first), nfx's weight-decay
    exemptions, and `AGC(agc)` for normaliser-free models (`agc=None`: none; BatchNorm models
    get none by default, as they do not need it).

    `pretrained`: timm's hub weights; `weights`: a local .safetensors / .pth state dict instead
    (the classifier may have another class count). With `normalize`, the model's mean/std are
    added to `dls.after_batch` unless a Normalize is there already (like vision_learner).
    `opt_func` defaults to nfx's `fused_adam`: fastai's Adam (same hyper-parameters, same state,
    same numbers) stepped by torch's fused kernel, 4–6× faster per step on the CPU. Other keyword
    arguments go to fastai's Learner."""
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat

    from nfx.models.factory import create_model, is_nf

    model, prep, _source = create_model(arch, int(n_out or dls.c), pretrained or bool(weights),
                                        str(weights) if weights else None)
    if normalize:
        _add_normalize(dls, prep.mean, prep.std)
    extra = [NoDecay()]
    if agc is not None and (is_nf(arch) or agc != "auto"):
        extra.append(AGC(agc))
    more = [] if cbs is None else list(cbs) if isinstance(cbs, (list, tuple)) else [cbs]  # fastai takes one or a list
    kwargs.setdefault("opt_func", fused_adam)
    return Learner(dls, model, loss_func=loss_func or CrossEntropyLossFlat(), metrics=metrics, splitter=nf_splitter,
                   wd=wd, wd_bn_bias=False, train_bn=True, cbs=[*extra, *more], **kwargs)


def _add_normalize(dls: Any, mean: Any, std: Any) -> None:
    from fastai.data.transforms import Normalize

    if any(isinstance(t, Normalize) for t in dls.after_batch.fs):
        return
    dls.add_tfms([Normalize.from_stats(list(mean), list(std))], "after_batch")


class DecodeImage(Transform):
    """path → fastai TensorImage (3 × size × size, float in [0, 1]) decoded by nfx: DICOM with its
    VOI / rescale / photometric rules and `frame`, 16-bit PNG and TIFF at full depth, 8-bit images;
    resized by nfx's policy (squish | letterbox | crop). With `cache_dir`, through nfx's decoded-image
    cache (the one `nfx finetune --cache-dir` uses). A file that cannot be decoded raises
    nfx.errors.BadFileError naming it and the reason."""

    def __init__(self, size: int = 224, resize: str = "squish", frame: int | None = None, voi: str = "stored",
                 cache_dir: str | Path | None = None):
        from nfx.records import check_policy, check_voi

        super().__init__()
        self.size, self.resize, self.frame = int(size), check_policy(resize), frame
        self.voi, self.cache_dir = check_voi(voi), cache_dir

    def _array(self, path: Any) -> np.ndarray:
        from nfx.data.cache import ImageCache, preprocess

        if self.cache_dir is None:
            return preprocess(path, self.size, self.frame, self.resize, self.voi, notes=[])
        return ImageCache(self.cache_dir, self.size, self.frame, resize=self.resize, voi=self.voi).get(path)

    def encodes(self, o):  # noqa: ANN001 (fastcore dispatches on annotations; any path-like goes)
        from fastai.torch_core import TensorImage

        arr = np.asarray(self._array(o), dtype=np.float32)
        return TensorImage(torch.from_numpy(arr).permute(2, 0, 1).contiguous())


def MedicalImageBlock(size: int = 224, resize: str = "squish", frame: int | None = None, voi: str = "stored",  # noqa: N802
                      cache_dir: str | Path | None = None):
    """A DataBlock block for DICOM and other medical images (see DecodeImage): use it where you
    would use ImageBlock; no item_tfms resize is needed, batch_tfms (aug_transforms) work as usual."""
    from fastai.data.block import TransformBlock

    return TransformBlock(type_tfms=DecodeImage(size, resize, frame, voi, cache_dir))


def dicom_patient(path: Any) -> str | None:
    """A DICOM file's PatientID (None for other files or when empty), read without pixel data."""
    p = Path(path)
    if p.suffix.lower() not in (".dcm", ".dicom", "") and not p.name.lower().endswith(".dcm"):
        return None
    import pydicom

    from nfx.data.dicom import patient_id

    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # not DICOM after all
        return None
    return patient_id(ds)


class GroupedSplitter:
    """fastai splitter: `valid_pct` of the items for validation, grouped so that no patient and no
    copy group (one image re-saved at another size, encoding, window, rotation or mirror) has
    images on both sides, stratified by label — the split `nfx finetune` makes.

    `get_y`: the label of an item (as in the DataBlock); `get_patient`: its patient id or None
    (e.g. `dicom_patient`; default: none, one group per image and its copies); `copies=False`
    skips the copy search (it decodes every image once; with `cache_dir` and the block's `size`
    and `resize`, into the cache MedicalImageBlock then reads).
    Copies carrying different labels are warned about (they contradict each other)."""

    def __init__(self, get_y: Callable[[Any], Any], valid_pct: float = 0.2, seed: int = 0,
                 get_patient: Callable[[Any], str | None] | None = None, copies: bool = True,
                 frame: int | None = None, voi: str = "stored", cache_dir: str | Path | None = None,
                 size: int = 224, resize: str = "squish"):
        if not 0 < valid_pct < 1:
            raise ValueError(f"valid_pct must be between 0 and 1 (got {valid_pct})")
        self.get_y, self.valid_pct, self.seed, self.get_patient = get_y, valid_pct, seed, get_patient
        self.copies, self.frame, self.voi, self.cache_dir = copies, frame, voi, cache_dir
        self.size, self.resize = size, resize  # of the cache entries (MedicalImageBlock's, to share them)
        self.copy_of: list[int] | None = None

    def __call__(self, items: Any) -> tuple[list[int], list[int]]:
        from nfx.data.split import (
            copy_label_conflicts,
            group_keys,
            grouped_stratified_split,
            merge_copy_groups,
        )

        items = list(items)
        paths = [str(o) for o in items]
        labels = [str(self.get_y(o)) for o in items]
        patients = [self.get_patient(o) for o in items] if self.get_patient else [None] * len(items)
        groups = group_keys(paths, patients)
        if self.copies:
            self.copy_of = self._copy_of(paths)
            groups = merge_copy_groups(groups, self.copy_of)
            conflicts = copy_label_conflicts(labels, self.copy_of)
            if conflicts:
                a, b = conflicts[0][:2]
                warnings.warn(f"{len(conflicts)} group(s) of copies of one image carry different labels, e.g. "
                              f"{paths[a]} ({labels[a]}) and {paths[b]} ({labels[b]}); fix the labels", stacklevel=2)
        split = grouped_stratified_split(labels, groups, self.valid_pct, self.seed)
        return ([i for i, s in enumerate(split) if s == "train"], [i for i, s in enumerate(split) if s == "valid"])

    def _copy_of(self, paths: list[str]) -> list[int]:
        from nfx.data.cache import ImageCache, sig_of
        from nfx.data.copies import group_copies, signature
        from nfx.data.images import decode_file

        if self.cache_dir is not None:
            cache = ImageCache(self.cache_dir, self.size, self.frame, resize=self.resize, voi=self.voi)
            sigs = []
            for p in paths:
                cache.get(p)
                sigs.append(np.load(sig_of(cache.entry(p))))
        else:
            sigs = [signature(decode_file(Path(p), frame=self.frame, voi=self.voi)) for p in paths]
        return group_copies(np.stack(sigs)).group.tolist()
