"""fastai callbacks: short adapters around nfx's pure parts. Each states its contract.

Event order inside one training batch (fastai's Learner):
    before_batch → model → after_pred → loss → after_loss → before_backward → backward
    → after_backward → before_step → opt.step → after_step → opt.zero_grad → after_batch
Callbacks with a smaller `order` run first at each event.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision

from nfx.train import agc
from nfx.train.accumulation import MicroBatchAccumulation
from nfx.train.checkpoint import skipped


def clip_stats(clipped: list[torch.Tensor], units: list[int]) -> tuple[float | None, float | None]:
    """(mean, min) over an epoch's steps of the fraction of units clipped; one host sync.
    The min is what "nearly every unit clipped at every step" is judged on."""
    if not units:
        return None, None
    per_step = torch.stack([c.float() for c in clipped]).cpu() / torch.tensor(units, dtype=torch.float32)
    return float(per_step.mean()), float(per_step.min())


class AGCCallback(Callback):
    """Adaptive Gradient Clipping once per optimizer step, head excluded by identity
    (Brock et al. 2021). Public as `nfx.fastai.AGC`.

    - `clip_factor`: λ, or "auto" (nfx.config.auto_agc_clip of the effective batch: the train
      loader's batch size × fastai's GradientAccumulation or nfx's accumulation × processes,
      found in before_fit).
    - What is clipped: `params` when given (any iterable; a generator is read once, here), else
      every trainable parameter but the head (`exclude`, a module or parameters, when given;
      else found by `head_params`: timm's classifier by identity, or the last parameter group of
      fastai's splitter, which is the head for vision_learner and nf_learner).
    - `column`: the Recorder column showing the fraction of units clipped in each epoch's
      training steps (None: no column; nfx's CLI logs it itself).

    Contract:
    - before_step with order = MixedPrecision.order + 1 (the slot of fastai's GradientClip):
      MixedPrecision has already unscaled the gradients (GradScaler.unscale_) and has cancelled
      overflow steps, so AGC sees finite, unscaled gradients.
    - fastai's GradientAccumulation and nfx's MicroBatchAccumulation (order 6) cancel the batch
      before this runs until their window is complete: AGC sees the fully accumulated gradient
      exactly once per optimizer step.
    - Frozen parameters have no gradient and are left alone (fine_tune's frozen epochs).
    Clip statistics stay on the device during the epoch and are read once at its end.
    """

    order = MixedPrecision.order + 1

    def __init__(self, clip_factor: float | str = "auto", eps: float = 1e-3, *, params: Any = None,
                 exclude: Any = None, column: str | None = "agc_clipped"):
        check_clip_factor(clip_factor)
        self.clip_factor, self.eps, self.column = clip_factor, eps, column
        self.given = None if params is None else list(params)  # a generator is consumed once, here
        self.exclude = exclude
        self.params: list[torch.Tensor] = list(self.given or [])
        self.lam: float | None = None if clip_factor == "auto" else float(clip_factor)
        self.clipper = agc.Clipper()  # owns the cached plan for these parameters
        self.n_calls = 0
        self.epoch_fraction: float | None = None
        self.epoch_min_step_fraction: float | None = None

    def before_fit(self) -> None:
        if self.given is None:
            self.params = body_params(self.learn, self.exclude)
            self.clipper = agc.Clipper()
        self.lam = resolve_clip(self.clip_factor, self.learn)
        if self.column:
            add_column(self.learn, self.column, self.column_value)

    def column_value(self) -> float:
        """This epoch's fraction of units clipped (NaN before any step): the Recorder column."""
        return nan_if_none(self.epoch_fraction)

    def before_epoch(self) -> None:
        self._clipped: list[torch.Tensor] = []
        self._units: list[int] = []
        self.epoch_fraction = self.epoch_min_step_fraction = None

    def before_step(self) -> None:
        clipped, units = self.clipper(self.params, self.lam, self.eps)
        self.n_calls += 1
        if clipped is not None and units:
            self._clipped.append(clipped)
            self._units.append(units)

    def after_train(self) -> None:
        self.epoch_fraction, self.epoch_min_step_fraction = clip_stats(self._clipped, self._units)


def check_clip_factor(clip_factor: Any) -> None:
    if not (clip_factor == "auto" or (isinstance(clip_factor, (int, float)) and clip_factor > 0)):
        raise ValueError(f"clip_factor must be 'auto' or a number > 0 (got {clip_factor!r}); "
                         "to train without AGC, leave the callback out")


def resolve_clip(clip_factor: float | str, learn: Any) -> float:
    """λ: the number given, or for "auto" nfx.config.auto_agc_clip of the Learner's effective batch."""
    if clip_factor != "auto":
        return float(clip_factor)
    from nfx.records import auto_agc_clip

    return auto_agc_clip(effective_batch(learn))


def head_params(learn: Any) -> list[torch.Tensor]:
    """The head's parameters, by identity: timm's get_classifier() on the model when it has
    parameters, else the last parameter group of the Learner's splitter (fastai's vision_learner
    and nfx's nf_learner put the head there). Empty when neither tells."""
    get = getattr(learn.model, "get_classifier", None)
    if get is not None:
        found = list(get().parameters())
        if found:
            return found
    groups = list(learn.splitter(learn.model))
    if not groups or isinstance(groups[0], torch.Tensor):  # fastai's default: one flat list of parameters
        return []
    return list(groups[-1]) if len(groups) > 1 else []


def body_params(learn: Any, exclude: Any = None) -> list[torch.Tensor]:
    """Every parameter of the model but the head (`exclude`: a module or parameters)."""
    from nfx.errors import ModelError

    if exclude is not None:
        head = list(exclude.parameters()) if isinstance(exclude, torch.nn.Module) else list(exclude)
    else:
        head = head_params(learn)
    if not head:
        raise ModelError(f"AGC cannot tell the head of this {type(learn.model).__name__}: pass the classifier "
                         "to leave unclipped, e.g. AGC(exclude=learn.model.fc), or the parameters to clip "
                         "with AGC(params=...)")
    ids = {id(p) for p in head}
    return [p for p in learn.model.parameters() if id(p) not in ids]


def effective_batch(learn: Any) -> int:
    """Samples per optimizer step: the train loader's batch size × accumulation × processes."""
    from fastai.callback.training import GradientAccumulation

    bs = int(getattr(learn.dls.train, "bs", 0) or 1)
    n = bs
    for cb in learn.cbs:
        if isinstance(cb, GradientAccumulation):  # steps once it has seen n_acc samples
            n = max(bs, -(-int(cb.n_acc) // bs) * bs)
        elif isinstance(cb, MicroBatchAccumulation):
            n = bs * int(cb.accum)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        n *= torch.distributed.get_world_size()
    return n


def add_column(learn: Any, name: str, value: Any) -> None:
    """A Recorder column `name` (fastai's ValueMetric): shown in fastai's table, kept in
    recorder.values. Added once, however many fits run (fine_tune runs two)."""
    from fastai.learner import ValueMetric

    if not any(getattr(m, "name", None) == name for m in learn.metrics):
        learn.metrics = list(learn.metrics) + [ValueMetric(value, name)]


def nan_if_none(v: float | None) -> float:
    return float("nan") if v is None else v


class FrozenBatchNorm(Callback):
    """BatchNorm layers in eval mode while training (`--bn frozen`): they normalise with their running
    statistics, which stay as they are; their affine weights still train. What a practitioner tries when
    micro-batches are too small for batch statistics. Runs after fastai's TrainEvalCallback has put the
    model in train mode."""

    order = 1  # after TrainEvalCallback (order -10) set model.train()

    def before_train(self) -> None:
        from nfx.models.factory import batchnorm_layers

        for m in batchnorm_layers(self.learn.model):
            m.eval()


class EpochLog(Callback):
    """Collects one row per epoch (after the Recorder, order 60) and hands it to `on_epoch`.

    Contract: runs after Recorder.after_epoch, so `recorder.log` holds this epoch's values.
    """

    order = 60

    def __init__(self, phase: str, on_epoch: Any, agc_cb: AGCCallback | None, printer: Any, epoch_offset: int = 0,
                 start_epoch: int = 0):
        self.phase, self.on_epoch, self.agc_cb, self.printer = phase, on_epoch, agc_cb, printer
        self.epoch_offset, self.start_epoch = epoch_offset, start_epoch

    def before_epoch(self) -> None:
        self._t0 = time.time()
        self._t_valid = None

    def before_validate(self) -> None:
        self._t_valid = time.time()

    def after_epoch(self) -> None:
        if skipped(self.epoch, self.start_epoch):
            return  # an epoch fastai's SkipToEpoch cancelled while resuming
        names = list(self.recorder.metric_names)
        vals = list(self.recorder.log)
        row: dict[str, Any] = {"epoch": self.epoch_offset + self.epoch + 1, "phase": self.phase}
        for n, v in zip(names, vals):
            if n in ("epoch", "time"):
                continue
            row[_metric_key(n)] = _num(v)
        row["lr"] = _num(self.opt.hypers[-1]["lr"])
        if self.agc_cb is not None:
            row["agc_clip_fraction"] = self.agc_cb.epoch_fraction
        now = time.time()
        row["seconds"] = round(now - self._t0, 2)
        row["train_seconds"] = round((self._t_valid or now) - self._t0, 2)  # the training pass alone
        self.on_epoch(row)


class RichProgress(Callback):
    """Replaces fastai's ProgressCallback: one progress bar per fit, advanced per batch.

    Contract: purely observational; never touches the model, loss or gradients.
    """

    order = 65

    def __init__(self, printer: Any, description: str):
        self.printer, self.description = printer, description

    def before_fit(self) -> None:
        total = self.n_epoch * (len(self.dls.train) + len(self.dls.valid))
        self._ctx = self.printer.progress(total, self.description)
        self._bar = self._ctx.__enter__()

    def after_batch(self) -> None:
        self._bar.advance(1)

    def after_fit(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop the bar (idempotent). fastai skips after_fit when an exception ends the fit, so
        fit() also calls this on the way out: an error must be the last line printed."""
        ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx is not None:
            ctx.__exit__(None, None, None)


class StopOnNaN(Callback):
    """Stops with a clear error when the training loss is NaN or inf (checked at the end of each
    training epoch from the Recorder's smoothed loss, which a NaN poisons for good; no per-batch
    host sync)."""

    order = 55

    def after_train(self) -> None:
        # One host sync per epoch, before validation (whose metrics would choke on NaN outputs).
        loss = getattr(self.learn, "smooth_loss", None)
        if loss is not None and not math.isfinite(float(loss)):
            from nfx.errors import TrainingError

            raise TrainingError(
                f"training loss became {float(loss)} in epoch {self.epoch + 1}; lower --lr, keep AGC on, "
                "or use --precision fp32; the last good checkpoint is kept"
            )


def _metric_key(name: str) -> str:
    return {"roc_auc_score": "valid_roc_auc", "accuracy": "valid_accuracy"}.get(name, name)


def _num(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return round(f, 6) if math.isfinite(f) else f


class EagerValidation(Callback):
    """With --compile, validation runs the eager model.

    Measured on CPU (torch 2.14): every new input shape recompiles the whole model (dm_nfnet_f0:
    127 s first compile, 112 s again for a new batch size; nf_resnet50: 53 s / 57 s). Training
    batches all have one shape (the train loader drops its last incomplete batch), but validation
    uses another batch size and a shorter last batch, and eval mode is a further guard — three more
    compilations for a pass that is a small part of the work. Contract: before_validate stashes
    nn.Module.compile()'s compiled call (so the module runs its plain forward), after_validate puts
    it back; parameters and state_dict are untouched.
    """

    order = -15

    def before_validate(self) -> None:
        self._stash = getattr(self.learn.model, "_compiled_call_impl", None)
        self.learn.model._compiled_call_impl = None

    def after_validate(self) -> None:
        self.learn.model._compiled_call_impl = getattr(self, "_stash", None)

