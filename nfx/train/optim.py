"""fastai's Adam (AdamW: decoupled weight decay, β = (0.9, 0.99), eps 1e-5), stepped with
torch._foreach kernels.

fastai's `Optimizer.step` runs its update functions once per parameter in Python: about six
small kernels per tensor, i.e. ~1,400 launches per step for dm_nfnet_f0's 231 tensors. This
subclass keeps fastai's Optimizer (param groups from the splitter, freeze/unfreeze, per-parameter
`state` with the same keys — `grad_avg`, `sqr_avg`, `step`, `do_wd` — so checkpoints, resume and
the weight-decay exemptions work unchanged) and only replaces `step` with the same arithmetic
applied to whole buckets of tensors (same group, same step count, same do_wd, device, dtype).

nfx uses it on CUDA only, the policy torch itself follows for `foreach`: on the CPU, big tensors
are better served one at a time (cache locality). Measured on 2 CPU cores, opt.step() for
dm_nfnet_f0: fastai Adam 107 ms, this 234 ms, torch's foreach AdamW 183 ms; for nf_resnet26:
44 / 24 / 22 ms. The GPU gain is not measured yet.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial

import torch
from fastai.optimizer import (
    Optimizer,
    adam_step,
    average_grad,
    average_sqr_grad,
    step_stat,
    weight_decay,
)


class ForeachAdam(Optimizer):
    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise NotImplementedError("closures are not supported")
        for pg, hyper in zip(self.param_lists, self.hypers):
            lr, mom, sqr_mom, eps, wd = (float(hyper[k]) for k in ("lr", "mom", "sqr_mom", "eps", "wd"))
            buckets: dict[tuple, list[torch.Tensor]] = defaultdict(list)
            for p in pg:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "grad_avg" not in st:
                    st["grad_avg"] = torch.zeros_like(p.grad)
                    st["sqr_avg"] = torch.zeros_like(p.grad)
                key = (int(st.get("step", 0)), bool(st.get("do_wd", True)), p.device, p.dtype)
                buckets[key].append(p)
            for (step, do_wd, _dev, _dt), ps in buckets.items():
                states = [self.state[p] for p in ps]
                grads = [p.grad for p in ps]
                avgs = [s["grad_avg"] for s in states]
                sqrs = [s["sqr_avg"] for s in states]
                if do_wd and wd != 0:
                    torch._foreach_mul_(ps, 1 - lr * wd)
                torch._foreach_mul_(avgs, mom)
                torch._foreach_add_(avgs, grads, alpha=1 - mom)
                torch._foreach_mul_(sqrs, sqr_mom)
                torch._foreach_addcmul_(sqrs, grads, grads, value=1 - sqr_mom)
                step += 1
                debias1 = 1 - mom**step
                debias2 = 1 - sqr_mom**step
                denom = torch._foreach_div(sqrs, debias2)
                torch._foreach_sqrt_(denom)
                torch._foreach_add_(denom, eps)
                torch._foreach_addcdiv_(ps, avgs, denom, value=-lr / debias1)
                for s in states:
                    s["step"] = step


def foreach_adam(params, lr, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-5, wd: float = 0.01):
    """Drop-in for fastai.optimizer.Adam (decouple_wd=True)."""
    cbs = [weight_decay, partial(average_grad, dampening=True), average_sqr_grad, step_stat, adam_step]
    return ForeachAdam(params, cbs, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)
