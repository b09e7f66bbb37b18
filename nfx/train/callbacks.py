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
    """Adaptive Gradient Clipping once per optimizer step, head excluded by identity.

    Contract:
    - before_step with order = MixedPrecision.order + 1 (the slot of fastai's GradientClip):
      MixedPrecision has already unscaled the gradients (GradScaler.unscale_) and has cancelled
      overflow steps, so AGC sees finite, unscaled gradients.
    - MicroBatchAccumulation (order 6) cancels incomplete windows before this runs: AGC sees
      the fully accumulated gradient exactly once per optimizer step.
    - Only the parameters passed in (the body) are clipped; frozen ones have no gradient.
    Clip statistics stay on the device during the epoch and are read once at its end.
    """

    order = MixedPrecision.order + 1

    def __init__(self, params: list[torch.Tensor], clip_factor: float, eps: float = 1e-3):
        self.params = params
        self.clip_factor = clip_factor
        self.eps = eps
        self.clipper = agc.Clipper()  # owns the cached plan for these parameters
        self.n_calls = 0
        self.epoch_fraction: float | None = None
        self.epoch_min_step_fraction: float | None = None

    def before_epoch(self) -> None:
        self._clipped: list[torch.Tensor] = []
        self._units: list[int] = []

    def before_step(self) -> None:
        clipped, units = self.clipper(self.params, self.clip_factor, self.eps)
        self.n_calls += 1
        if clipped is not None and units:
            self._clipped.append(clipped)
            self._units.append(units)

    def after_train(self) -> None:
        self.epoch_fraction, self.epoch_min_step_fraction = clip_stats(self._clipped, self._units)


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
        self._ctx.__exit__(None, None, None)


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


class PerSampleAGCCallback(Callback):
    """Per-sample AGC: replaces the backward pass of each training micro-batch by per-sample
    clipped gradients (nfx.train.persample), head excluded by identity.

    Contract (order 7: after MicroBatchAccumulation (6), before MixedPrecision (10)):
    - before_batch: if some clipped (body) parameter is trainable, the normal forward runs under
      no_grad (its prediction and loss are still used for metrics and logging; no graph is kept).
      With the body frozen this callback stays out of the way and the normal backward runs.
    - after_loss: grad mode restored.
    - before_backward: computes weight · mean_i clip(g_i) for this micro-batch and adds it to the
      gradients (fp32), then raises CancelBackwardException so the normal backward is skipped.
      weight = 1 / (micro-batches in the accumulation window), from MicroBatchAccumulation, so a
      window's gradient is the mean over its samples, as in batch mode. Under fp16 the GradScaler's
      scale is folded in so MixedPrecision's unscale_ and overflow skip work unchanged; under
      bf16/fp16 the per-sample forward runs under the same autocast dtype.
    - before_step: float32 side buffers (non-fp32 parameters only) are added into p.grad, before
      MixedPrecision unscales. The batch-mode AGCCallback must not be installed alongside.
    - Class-weighted cross-entropy: the batch loss Σ w_yi L_i / Σ w_yj is split into per-sample
      losses (B·w_yi / Σ w_yj) · L_i, so with clipping off the result equals the batch gradient.
    Clip statistics (fraction of (sample, unit) pairs clipped) stay on the device during the epoch.
    """

    order = MicroBatchAccumulation.order + 1

    def __init__(self, model: torch.nn.Module, params: list[torch.Tensor], clip_factor: float,
                 eps: float = 1e-3, chunk: int | None = None, accum_cb: MicroBatchAccumulation | None = None):
        from nfx.train.persample import PerSampleAGC

        self.clipper = PerSampleAGC(model, params, clip_factor, eps=eps, chunk=chunk)
        self.params, self.clip_factor, self.eps, self.accum_cb = params, clip_factor, eps, accum_cb
        self.n_calls = 0
        self.epoch_fraction: float | None = None
        self.epoch_min_step_fraction: float | None = None
        self._active = False
        self._window_active = False
        self._grad_was: bool | None = None

    def before_epoch(self) -> None:
        self._clipped: list[torch.Tensor] = []
        self._units: list[int] = []

    def before_batch(self) -> None:
        self._active = bool(self.training) and self.clipper.any_clipped_trainable()
        self._window_active = self._window_active or self._active
        if self._active:
            self._grad_was = torch.is_grad_enabled()
            torch.set_grad_enabled(False)

    def _restore(self) -> None:
        if self._grad_was is not None:
            torch.set_grad_enabled(self._grad_was)
            self._grad_was = None

    def after_loss(self) -> None:
        self._restore()

    def after_cancel_batch(self) -> None:
        self._restore()

    def after_batch(self) -> None:
        self._restore()

    def before_backward(self) -> None:
        if not self._active:
            return
        from fastai.callback.core import CancelBackwardException

        x = self.learn.xb[0].as_subclass(torch.Tensor)
        y = self.learn.yb[0].as_subclass(torch.Tensor)
        weight = 1.0 / self.accum_cb.window_len() if self.accum_cb is not None else 1.0
        autocast_dtype, loss_scale = None, None
        mp = next((cb for cb in self.learn.cbs if isinstance(cb, MixedPrecision)), None)
        if mp is not None and getattr(mp, "autocast", None) is not None and x.device.type == "cuda":
            autocast_dtype = mp.autocast.fast_dtype
            scaler = getattr(self.learn, "scaler", None)
            if scaler is not None and scaler.is_enabled():
                loss_scale = scaler.scale(torch.ones((), device=x.device))  # device tensor, no sync
        loss_fn, sample_weight = _per_sample_loss(self.learn.loss_func, y)
        clipped, units = self.clipper.accumulate_(x, y, loss_fn, weight=weight, loss_scale=loss_scale,
                                                  autocast_dtype=autocast_dtype, sample_weight=sample_weight)
        self.n_calls += 1
        if units:
            self._clipped.append(clipped)
            self._units.append(units)
        raise CancelBackwardException()

    def before_step(self) -> None:
        self.clipper.flush_()
        if self._window_active:
            # the normal backward (and with it DDP's all-reduce) was skipped: average the
            # gradients over processes here, once per optimizer step (no-op in one process)
            from nfx.train.distributed import all_reduce_mean

            all_reduce_mean([p.grad for p in self.learn.model.parameters() if p.grad is not None])
        self._window_active = False

    def after_train(self) -> None:
        self.epoch_fraction, self.epoch_min_step_fraction = clip_stats(self._clipped, self._units)


def _per_sample_loss(loss_func: Any, y: torch.Tensor) -> tuple[Any, torch.Tensor | None]:
    """A loss for a batch of one (plain tensors, usable under vmap) and per-sample weights that
    make the mean of per-sample losses equal the batch loss (class-weighted cross-entropy)."""
    func = getattr(loss_func, "func", loss_func)  # fastai BaseLoss wraps the torch loss
    if not isinstance(func, torch.nn.Module):
        return loss_func, None
    w = getattr(func, "weight", None)
    if w is None or not isinstance(func, torch.nn.CrossEntropyLoss):
        return func, None
    wy = w.to(y.device)[y]
    return func, wy * (y.shape[0] / wy.sum())


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

