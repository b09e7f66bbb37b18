"""Gradient accumulation over micro-batches as a fastai callback (and DDP's no_sync between
optimizer steps when several processes train)."""

from __future__ import annotations

from typing import Any

from fastai.callback.core import Callback, CancelBatchException
from fastai.callback.fp16 import MixedPrecision


class MicroBatchAccumulation(Callback):
    """`accum` micro-batches per optimizer step (fastai's GradientAccumulation counts samples).

    Contract:
    - after_loss: divides `loss_grad` by the number of micro-batches in the current window, so
      the accumulated gradient is the mean over the window's samples (training batches all have
      the same size: the train loader drops the remainder of the epoch at whole windows).
    - before_step (order 6, before MixedPrecision/AGC): cancels the batch — skipping step and
      zero_grad — until the window is complete.
    - Epoch-end rule: a window never spans two epochs. nfx's train loader keeps a whole number of
      windows per epoch, so every window is full; with another loader (or a set smaller than one
      window) the last window is shorter, still steps, and its gradient is the mean over the
      samples it saw.
    """

    order, run_valid = MixedPrecision.order - 4, False

    def __init__(self, accum: int):
        self.accum = int(accum)
        self.n_steps = 0
        self._no_sync: Any = None

    def window_len(self) -> int:
        """Micro-batches in the current window (public: PerSampleAGCCallback weights each by 1/this)."""
        n_iter = len(self.learn.dl)
        start = (self.learn.iter // self.accum) * self.accum
        return min(self.accum, n_iter - start)

    def _window_ends_here(self) -> bool:
        i, n_iter = self.learn.iter, len(self.learn.dl)
        return (i + 1) % self.accum == 0 or i + 1 == n_iter

    def before_batch(self) -> None:
        # DDP (several processes): micro-batches before the last of a window run under no_sync(),
        # so the gradient is all-reduced once per optimizer step, on the last micro-batch
        no_sync = getattr(self.learn.model, "no_sync", None)
        if self.training and no_sync is not None and not self._window_ends_here():
            self._no_sync = no_sync()
            self._no_sync.__enter__()

    def _leave_no_sync(self) -> None:
        if self._no_sync is not None:
            ctx, self._no_sync = self._no_sync, None
            ctx.__exit__(None, None, None)

    def after_backward(self) -> None:
        self._leave_no_sync()

    def after_cancel_batch(self) -> None:
        self._leave_no_sync()

    def after_batch(self) -> None:
        self._leave_no_sync()

    def after_loss(self) -> None:
        if self.training:
            self.learn.loss_grad = self.learn.loss_grad / self.window_len()

    def before_step(self) -> None:
        i, n_iter = self.learn.iter, len(self.learn.dl)
        if (i + 1) % self.accum != 0 and i + 1 != n_iter:
            raise CancelBatchException()
        self.n_steps += 1
