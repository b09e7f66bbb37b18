"""Per-sample AGC as a fastai callback: the one-pass implementation (nfx.train.onepass) by
default, the torch.func reference (nfx.train.persample) where a model has a layer the one-pass
taps do not cover, with a one-line note saying so."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision

from nfx.errors import ModelError
from nfx.train.accumulation import MicroBatchAccumulation
from nfx.train.callbacks import clip_stats

# what this callback dispatches on; nfx.variants.PERSAMPLE_IMPLS describes each for the CLI and config
# (tests/test_variants.py keeps the two equal)
IMPLEMENTED = ("auto", "one-pass", "vmap")


class PerSampleAGCCallback(Callback):
    """Per-sample AGC: each training micro-batch's gradient becomes the mean of its samples'
    unit-wise clipped gradients, head excluded by identity.

    Contract (order 7: after MicroBatchAccumulation (6), before MixedPrecision (10)):
    - Only while some clipped (body) parameter is trainable; with the body frozen the callback
      stays out of the way and the normal backward runs.
    - one-pass: before_batch installs the taps on the clipped layers (the first time after
      checking on two samples that the tapped model computes the same output), after_pred removes
      them; before_backward backpropagates the mean of per-sample losses from the prediction, so
      autograd leaves `weight · mean_b clip(g_b)` in p.grad (and DDP all-reduces it as usual).
    - vmap: the normal forward runs under no_grad (its prediction and loss are still used for
      metrics and logging); before_backward computes the clipped mean by vmap(grad) and adds it;
      before_step adds the float32 side buffers and all-reduces over processes (the normal
      backward, and with it DDP's all-reduce, did not run).
    - Both: before_backward raises CancelBackwardException, so fastai's backward is skipped.
      weight = 1 / (micro-batches in the accumulation window), from MicroBatchAccumulation, so a
      window's gradient is the mean over its samples, as in batch mode. Under fp16 the
      GradScaler's scale is folded in (norms are taken unscaled) so MixedPrecision's unscale_ and
      overflow skip work unchanged; bf16/fp16 forwards run under the same autocast dtype.
    - Class-weighted cross-entropy: the batch loss Σ w_yi L_i / Σ w_yj is split into per-sample
      losses (B·w_yi / Σ w_yj) · L_i, so with clipping off the result equals the batch gradient.
    Clip statistics (fraction of (sample, unit) pairs clipped) stay on the device during the epoch.
    """

    order = MicroBatchAccumulation.order + 1

    def __init__(self, model: torch.nn.Module, params: list[torch.Tensor], clip_factor: float,
                 eps: float = 1e-3, chunk: int | None = None, accum_cb: MicroBatchAccumulation | None = None,
                 impl: str = "auto", note: Callable[[str], Any] | None = None):
        from nfx.train.onepass import OnePassPerSampleAGC

        if impl not in IMPLEMENTED:
            raise ValueError(f"impl must be one of {IMPLEMENTED} (got {impl!r})")
        self.model, self.params, self.clip_factor, self.eps, self.chunk = model, params, clip_factor, eps, chunk
        self.accum_cb, self.note = accum_cb, note or (lambda msg: None)
        self.forced = impl != "auto"
        self.clipper: Any = None
        self._checked = False
        if impl != "vmap":
            onepass = OnePassPerSampleAGC(model, params, clip_factor, eps=eps)
            missing = onepass.unsupported()
            if not missing:
                self.clipper, self.impl = onepass, "one-pass"
            else:
                self._fallback(f"{len(missing)} layer(s) the one-pass taps do not cover, e.g. {missing[0]}")
        if self.clipper is None:
            self._use_vmap()
        self.n_calls = 0
        self.epoch_fraction: float | None = None
        self.epoch_min_step_fraction: float | None = None
        self._active = False
        self._window_active = False
        self._grad_was: bool | None = None

    def _use_vmap(self) -> None:
        from nfx.train.persample import PerSampleAGC

        self.clipper = PerSampleAGC(self.model, self.params, self.clip_factor, eps=self.eps, chunk=self.chunk)
        self.impl = "vmap"

    def _fallback(self, why: str) -> None:
        if self.forced:
            raise ModelError(f"--persample-impl one-pass cannot be used with this model: {why}; "
                             "use --persample-impl auto (falls back to vmap)")
        self.note(f"per-sample AGC uses the torch.func (vmap) implementation, slower and more memory: {why}")
        self._use_vmap()

    def before_epoch(self) -> None:
        self._clipped: list[torch.Tensor] = []
        self._units: list[int] = []

    def before_batch(self) -> None:
        self._active = bool(self.training) and self.clipper.any_clipped_trainable()
        if not self._active:
            return
        x = self.learn.xb[0].as_subclass(torch.Tensor)
        if self.impl == "one-pass" and not self._checked:
            self._checked = True
            why = self.clipper.check(x[:2])
            if why is not None:
                self._fallback(f"the tapped model's check failed ({why})")
        if self.impl == "one-pass":
            self.clipper.install(x.shape[0])
        else:
            self._window_active = True
            self._grad_was = torch.is_grad_enabled()
            torch.set_grad_enabled(False)

    def _restore(self) -> None:
        if self.impl == "one-pass":
            self.clipper.remove()
        if self._grad_was is not None:
            torch.set_grad_enabled(self._grad_was)
            self._grad_was = None

    def after_pred(self) -> None:
        if self.impl == "one-pass":
            self.clipper.remove()

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

        y = self.learn.yb[0].as_subclass(torch.Tensor)
        weight = self._window_weight(y)
        autocast_dtype, loss_scale = None, None
        mp = next((cb for cb in self.learn.cbs if isinstance(cb, MixedPrecision)), None)
        if mp is not None and getattr(mp, "autocast", None) is not None and y.device.type == "cuda":
            autocast_dtype = mp.autocast.fast_dtype
            scaler = getattr(self.learn, "scaler", None)
            if scaler is not None and scaler.is_enabled():
                loss_scale = scaler.scale(torch.ones((), device=y.device))  # device tensor, no sync
        loss_fn, sample_weight = _per_sample_loss(self.learn.loss_func, y)
        if self.impl == "one-pass":
            pred = self.learn.pred.as_subclass(torch.Tensor)
            clipped, units = self.clipper.backward_(pred, y, loss_fn, weight=weight, loss_scale=loss_scale,
                                                    sample_weight=sample_weight)
        else:
            x = self.learn.xb[0].as_subclass(torch.Tensor)
            clipped, units = self.clipper.accumulate_(x, y, loss_fn, weight=weight, loss_scale=loss_scale,
                                                      autocast_dtype=autocast_dtype, sample_weight=sample_weight)
        self.n_calls += 1
        if units:
            self._clipped.append(clipped)
            self._units.append(units)
        raise CancelBackwardException()

    def _window_weight(self, y: torch.Tensor) -> float:
        """This micro-batch's share of the optimizer step, as the accumulation callback in use
        would have scaled its loss: 1 / (micro-batches in the window) for nfx's accumulation,
        bs / n_acc for fastai's GradientAccumulation (which divides loss_grad so), else 1."""
        from fastai.callback.training import GradientAccumulation

        accum = self.accum_cb or next((cb for cb in self.learn.cbs if isinstance(cb, MicroBatchAccumulation)), None)
        if accum is not None:
            return 1.0 / accum.window_len()
        fastai_acc = next((cb for cb in self.learn.cbs if isinstance(cb, GradientAccumulation)), None)
        return y.shape[0] / fastai_acc.n_acc if fastai_acc is not None else 1.0

    def before_step(self) -> None:
        if self.impl != "vmap":
            return
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
