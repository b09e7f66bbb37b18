"""Adaptive Gradient Clipping (Brock et al. 2021), unit-wise. Pure torch: no fastai import.

For each unit u (a row of a Linear weight, an output filter of a conv; 0-d and 1-d tensors are
one unit each):
    max_u = λ · max(‖W_u‖, eps)
    G_u  ← G_u · max_u / ‖G_u‖     if ‖G_u‖ > max_u
eps = 1e-3 lets zero-initialised parameters move. The caller decides which parameters are
clipped (nfx never passes the classifier head) and when (once per optimizer step, on the
fully accumulated, unscaled gradient).

Tensors are processed in groups of equal unit count and equal dtype, so the work is a handful
of batched kernels instead of one Python iteration per parameter; the number of clipped units
is returned as a device tensor so no host–device synchronisation happens per step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """‖x_u‖₂ per unit: one value for 0-d/1-d tensors, per output unit (dim 0) otherwise."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


def count_units(params: Iterable[torch.Tensor]) -> int:
    return sum(1 if p.ndim <= 1 else p.shape[0] for p in params)


@torch.no_grad()
def clip_(
    params: Iterable[torch.Tensor], clip_factor: float, eps: float = 1e-3
) -> tuple[torch.Tensor | None, int]:
    """Clip `p.grad` in place for every parameter with a gradient.

    Returns (number of clipped units as a 0-d device tensor or None if nothing had a gradient,
    total number of units considered).
    """
    groups: dict[tuple, list[torch.Tensor]] = defaultdict(list)
    for p in params:
        if p.grad is None:
            continue
        groups[(p.device, p.grad.dtype)].append(p)
    clipped: torch.Tensor | None = None
    total = 0
    for (_device, _dtype), ps in groups.items():
        n, units = _clip_group(ps, clip_factor, eps)
        clipped = n if clipped is None else clipped + n
        total += units
    return clipped, total


def _clip_group(ps: list[torch.Tensor], clip_factor: float, eps: float) -> tuple[torch.Tensor, int]:
    # Per-unit squared norms of weights and grads, computed in fp32, all units concatenated.
    w_sq, g_sq, sizes = [], [], []
    for p in ps:
        w, g = p.detach(), p.grad
        if p.ndim <= 1:
            w_sq.append(w.float().pow(2).sum().reshape(1))
            g_sq.append(g.float().pow(2).sum().reshape(1))
            sizes.append(1)
        else:
            dims = tuple(range(1, p.ndim))
            w_sq.append(w.float().pow(2).sum(dim=dims))
            g_sq.append(g.float().pow(2).sum(dim=dims))
            sizes.append(p.shape[0])
    w_norm = torch.cat(w_sq).sqrt_().clamp_min_(eps)
    g_norm = torch.cat(g_sq).sqrt_()
    max_norm = w_norm.mul_(clip_factor)
    trigger = g_norm > max_norm
    scale = torch.where(trigger, max_norm / g_norm.clamp_min(1e-6), torch.ones_like(g_norm))
    for p, s in zip(ps, torch.split(scale, sizes)):
        g = p.grad
        if p.ndim <= 1:
            g.mul_(s.reshape(()).to(g.dtype))
        else:
            g.mul_(s.to(g.dtype).reshape((-1,) + (1,) * (p.ndim - 1)))
    return trigger.sum(), int(sum(sizes))


@torch.no_grad()
def clip_reference_(params: Iterable[torch.Tensor], clip_factor: float, eps: float = 1e-3) -> int:
    """The plain per-parameter formula (as in the paper's pseudo-code); kept for tests."""
    n = 0
    for p in params:
        if p.grad is None:
            continue
        w_norm = unitwise_norm(p.detach().float()).clamp_min(eps)
        g_norm = unitwise_norm(p.grad.float())
        max_norm = w_norm * clip_factor
        trigger = g_norm > max_norm
        clipped = p.grad.float() * (max_norm / g_norm.clamp_min(1e-6))
        p.grad.copy_(torch.where(trigger, clipped, p.grad.float()).to(p.grad.dtype))
        n += int(trigger.sum())
    return n
