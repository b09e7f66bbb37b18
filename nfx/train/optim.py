"""nfx's optimisers: fastai's Adam (AdamW: decoupled weight decay, β = (0.9, 0.99), eps 1e-5),
stepped with torch's fused Adam kernel (the default), and SGD with Nesterov momentum (`--optimizer
sgd`, the NFNet paper's optimiser), stepped with foreach kernels.

fastai's `Optimizer.step` runs its update functions once per parameter in Python: about six
small kernels per tensor, i.e. ~1,400 launches per step for dm_nfnet_f0's 231 tensors, each a
separate pass over memory. This subclass keeps fastai's Optimizer (param groups from the
splitter, freeze/unfreeze, hyper-parameter schedules, per-parameter `state` with the same keys —
`grad_avg`, `sqr_avg`, `step`, `do_wd` — so checkpoints, resume and the weight-decay exemptions
work unchanged) and only replaces `step`: the same arithmetic applied to whole buckets of tensors
(same group, same step count, same do_wd, device, dtype) by `torch._fused_adamw_`, one pass over
each tensor, on the CPU as on CUDA. Where no fused kernel exists for a device, `torch._foreach_*`
kernels do the same steps.

The arithmetic is fastai's: p ← p·(1 − lr·wd) (if do_wd); m ← β₁m + (1 − β₁)g;
v ← β₂v + (1 − β₂)g²; p ← p − lr/(1 − β₁ᵗ) · m / (√(v/(1 − β₂ᵗ)) + eps) — torch's AdamW with
betas=(mom, sqr_mom) computes exactly this (√v/√(1 − β₂ᵗ) is the same quotient); tests/test_optim.py
checks it against fastai's Adam step by step.

`opt.step()` alone on 2 CPU cores (benchmarks/bench_train.py, docs/BENCHMARKS.md): nf_resnet26
fastai Adam 39 ms → 9 ms, dm_nfnet_f0 178 ms → 45 ms.
"""

from __future__ import annotations

from collections import defaultdict
from functools import cache, partial

import torch
from fastai.optimizer import (
    Optimizer,
    adam_step,
    average_grad,
    average_sqr_grad,
    step_stat,
    weight_decay,
)


def _fused_available(device: torch.device) -> bool:
    return _fused_device_type(device.type)


@cache
def _fused_device_type(kind: str) -> bool:
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return kind in _get_fused_kernels_supported_devices() and hasattr(torch, "_fused_adamw_")


class _Bucketed(Optimizer):
    """fastai's Optimizer stepped by whole buckets of tensors: the gradients of a param group are
    grouped by `_key` (tensors a kernel can update together), their state created by `_init`, and
    `_step_bucket` updates one bucket. Subclasses name their state and arithmetic only."""

    STATE: tuple[str, ...] = ()  # per-parameter buffers, zeros like the gradient on first use

    def zero_grad(self):
        """Gradients set to None (torch's default since 2.0) instead of fastai's detach + zero_ per
        tensor: no pass over the gradient memory, and the next backward writes instead of adding.
        Accumulation is unchanged (autograd creates the gradient, then adds into it)."""
        for p, *_ in self.all_params(with_grad=True):
            p.grad = None

    def _key(self, st: dict, p: torch.Tensor) -> tuple:
        return (bool(st.get("do_wd", True)), p.device, p.dtype)

    def _step_bucket(self, key: tuple, ps: list[torch.Tensor], hyper: dict) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise NotImplementedError("closures are not supported")
        for pg, hyper in zip(self.param_lists, self.hypers):
            buckets: dict[tuple, list[torch.Tensor]] = defaultdict(list)
            for p in pg:
                if p.grad is None:
                    continue
                st = self.state[p]
                for name in self.STATE:
                    if name not in st:
                        st[name] = torch.zeros_like(p.grad)
                buckets[self._key(st, p)].append(p)
            for key, ps in buckets.items():
                self._step_bucket(key, ps, hyper)


class FusedAdam(_Bucketed):
    """fastai's Optimizer holding fastai Adam's state, stepped by whole buckets of tensors (same
    group, step count, do_wd, device, dtype)."""

    STATE = ("grad_avg", "sqr_avg")

    def _key(self, st: dict, p: torch.Tensor) -> tuple:
        return (int(st.get("step", 0)), *super()._key(st, p))

    def _step_bucket(self, key: tuple, ps: list[torch.Tensor], hyper: dict) -> None:
        step, do_wd, dev, _dt = key
        lr, mom, sqr_mom, eps, wd = (float(hyper[k]) for k in ("lr", "mom", "sqr_mom", "eps", "wd"))
        states = [self.state[p] for p in ps]
        grads = [p.grad for p in ps]
        avgs = [s["grad_avg"] for s in states]
        sqrs = [s["sqr_avg"] for s in states]
        step += 1
        decay = wd if do_wd else 0.0
        if _fused_available(dev):
            t = torch.full((), float(step), dtype=torch.float32, device=dev)
            torch._fused_adamw_(ps, grads, avgs, sqrs, [], [t] * len(ps), amsgrad=False, lr=lr,
                                beta1=mom, beta2=sqr_mom, weight_decay=decay, eps=eps, maximize=False)
        else:
            _foreach_adamw(ps, grads, avgs, sqrs, step, lr, mom, sqr_mom, eps, decay)
        for s in states:
            s["step"] = step


def _foreach_adamw(ps, grads, avgs, sqrs, step, lr, mom, sqr_mom, eps, decay):
    if decay != 0:
        torch._foreach_mul_(ps, 1 - lr * decay)
    torch._foreach_mul_(avgs, mom)
    torch._foreach_add_(avgs, grads, alpha=1 - mom)
    torch._foreach_mul_(sqrs, sqr_mom)
    torch._foreach_addcmul_(sqrs, grads, grads, value=1 - sqr_mom)
    denom = torch._foreach_div(sqrs, 1 - sqr_mom**step)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(ps, avgs, denom, value=-lr / (1 - mom**step))


def fused_adam(params, lr, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-5, wd: float = 0.01):
    """Drop-in for fastai.optimizer.Adam (decouple_wd=True); nfx's default `opt_func`."""
    cbs = [weight_decay, partial(average_grad, dampening=True), average_sqr_grad, step_stat, adam_step]
    return FusedAdam(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)


class ForeachSGD(_Bucketed):
    """SGD with Nesterov momentum and decoupled weight decay in fastai's Optimizer, stepped by
    buckets with `torch._foreach_*` kernels (same zero_grad as FusedAdam). State per parameter:
    `grad_avg` (the momentum buffer), `do_wd`. Arithmetic, per step:
    p ← p·(1 − lr·wd) (if do_wd); b ← mom·b + g; p ← p − lr·(g + mom·b) — torch's SGD with
    nesterov=True, dampening 0, after fastai's decoupled decay; `mom` follows fastai's momentum
    schedule (fit_one_cycle cycles it 0.95 → 0.85 → 0.95)."""

    STATE = ("grad_avg",)

    def _step_bucket(self, key: tuple, ps: list[torch.Tensor], hyper: dict) -> None:
        do_wd = key[0]
        lr, mom, wd = (float(hyper[k]) for k in ("lr", "mom", "wd"))
        grads = [p.grad for p in ps]
        bufs = [self.state[p]["grad_avg"] for p in ps]
        if do_wd and wd != 0:
            torch._foreach_mul_(ps, 1 - lr * wd)
        torch._foreach_mul_(bufs, mom)
        torch._foreach_add_(bufs, grads)
        torch._foreach_add_(ps, grads, alpha=-lr)
        torch._foreach_add_(ps, bufs, alpha=-lr * mom)


def nesterov_step(p, lr, mom, grad_avg, **kwargs):
    """fastai-style per-tensor Nesterov update (after average_grad without dampening): the
    reference ForeachSGD is tested against."""
    p.data.add_(p.grad.data, alpha=-lr)
    p.data.add_(grad_avg, alpha=-lr * mom)


def sgd_nesterov(params, lr, mom: float = 0.9, wd: float = 0.01):
    """SGD with Nesterov momentum and decoupled weight decay (fastai hyper-parameter names:
    lr, mom, wd), foreach-stepped; `--optimizer sgd`."""
    cbs = [weight_decay, average_grad, nesterov_step]
    return ForeachSGD(params, cbs, lr=lr, mom=mom, wd=wd)
