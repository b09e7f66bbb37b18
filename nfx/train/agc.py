"""Adaptive Gradient Clipping (Brock et al. 2021), unit-wise. Pure torch: no fastai import.

For each unit u (a row of a Linear weight, an output filter of a conv; 0-d and 1-d tensors are
one unit each):
    max_u = λ · max(‖W_u‖, eps)
    G_u  ← G_u · max_u / ‖G_u‖     if ‖G_u‖ > max_u
eps = 1e-3 lets zero-initialised parameters move. The caller decides which parameters are
clipped (nfx never passes the classifier head) and when (once per optimizer step, on the
fully accumulated, unscaled gradient).

How `clip_` is fast (the parameter set is fixed for a fit, so the work is planned once):
- A plan is built on the first call and cached, keyed by the identity of the parameters. When
  the gradient tensors are new objects (optimizers that zero by setting `p.grad = None`, nfx's
  own included) the plan only rebinds its gradient lists; a changed gradient dtype or device
  re-plans.
- Tensors are grouped by (device, grad dtype, weight dtype). Whole-tensor norms of 0-d/1-d
  parameters are one `torch._foreach_norm` per group; per-unit norms of ≥2-d parameters are one
  `vector_norm(dim=…, dtype=float32)` each, which reads the tensor once with no fp32 temporary
  (the previous version materialised `x.float().pow(2)`).
- All norms of a group are concatenated, the scale for every unit is computed in a handful of
  kernels, and applied with one `torch._foreach_mul_` (fp32 scale into the grad's dtype, which
  rounds exactly like the reference's `(g.float() * s).to(dtype)`).
- Memory traffic is the floor: read W, read G, write G. The clipped count stays a device tensor,
  so there is no host–device synchronisation.
- Optionally (`compile=True`) the planned group function is torch.compile'd (meant for CUDA,
  where launch overhead dominates); any compile failure falls back to the eager path once and
  for all, so training never breaks because of the compiler.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """‖x_u‖₂ per unit: one value for 0-d/1-d tensors, per output unit (dim 0) otherwise."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


def count_units(params: Iterable[torch.Tensor]) -> int:
    return sum(1 if p.ndim <= 1 else p.shape[0] for p in params)


def _group_clip(whole_w: list[torch.Tensor], whole_g: list[torch.Tensor], unit_w: list[torch.Tensor],
                unit_g: list[torch.Tensor], unit_dims: list[tuple[int, ...]], unit_sizes: list[int],
                unit_bshapes: list[tuple[int, ...]], clip_factor: float, eps: float) -> torch.Tensor:
    """Clip one (device, dtype) group in place; returns the number of clipped units (0-d tensor).

    Written so that torch.compile can trace it (lists of fixed length, no data-dependent Python).
    """
    f32 = torch.float32
    w_parts: list[torch.Tensor] = []
    g_parts: list[torch.Tensor] = []
    if whole_w:
        w_parts.append(torch.stack(torch._foreach_norm(whole_w, 2, dtype=f32)))
        g_parts.append(torch.stack(torch._foreach_norm(whole_g, 2, dtype=f32)))
    for w, g, dims in zip(unit_w, unit_g, unit_dims):
        w_parts.append(torch.linalg.vector_norm(w, dim=dims, dtype=f32))
        g_parts.append(torch.linalg.vector_norm(g, dim=dims, dtype=f32))
    w_norm = torch.cat(w_parts) if len(w_parts) > 1 else w_parts[0]
    g_norm = torch.cat(g_parts) if len(g_parts) > 1 else g_parts[0]
    max_norm = w_norm.clamp_min(eps) * clip_factor
    trigger = g_norm > max_norm
    scale = torch.where(trigger, max_norm / g_norm.clamp_min(1e-6), torch.ones_like(g_norm))
    n_whole = len(whole_g)
    scales: list[torch.Tensor] = []
    if n_whole:
        scales.extend(scale[:n_whole].unbind(0))
    if unit_g:
        for s, bshape in zip(torch.split(scale[n_whole:], unit_sizes), unit_bshapes):
            scales.append(s.view(bshape))
    torch._foreach_mul_(whole_g + unit_g, scales)
    return trigger.sum()


class _Group:
    __slots__ = ("whole_p", "unit_p", "whole_w", "whole_g", "unit_w", "unit_g", "unit_dims", "unit_sizes",
                 "unit_bshapes", "n_units", "fn")

    def __init__(self) -> None:
        self.whole_p: list[torch.Tensor] = []
        self.unit_p: list[torch.Tensor] = []
        self.whole_w: list[torch.Tensor] = []
        self.whole_g: list[torch.Tensor] = []
        self.unit_w: list[torch.Tensor] = []
        self.unit_g: list[torch.Tensor] = []
        self.unit_dims: list[tuple[int, ...]] = []
        self.unit_sizes: list[int] = []
        self.unit_bshapes: list[tuple[int, ...]] = []
        self.n_units = 0
        self.fn: Any = _group_clip

    def add(self, p: torch.Tensor) -> None:
        w, g = p.detach(), p.grad
        if p.ndim <= 1:
            self.whole_p.append(p)
            self.whole_w.append(w)
            self.whole_g.append(g)
            self.n_units += 1
        else:
            self.unit_p.append(p)
            self.unit_w.append(w)
            self.unit_g.append(g)
            self.unit_dims.append(tuple(range(1, p.ndim)))
            self.unit_sizes.append(p.shape[0])
            self.unit_bshapes.append((p.shape[0],) + (1,) * (p.ndim - 1))
            self.n_units += p.shape[0]

    def rebind(self) -> None:
        self.whole_g = [p.grad for p in self.whole_p]
        self.unit_g = [p.grad for p in self.unit_p]

    def run(self, clip_factor: float, eps: float) -> torch.Tensor:
        return self.fn(self.whole_w, self.whole_g, self.unit_w, self.unit_g, self.unit_dims,
                       self.unit_sizes, self.unit_bshapes, clip_factor, eps)


class _Plan:
    __slots__ = ("params", "grads", "groups", "total", "compiled")

    def __init__(self, params: list[torch.Tensor], compile: bool) -> None:
        self.params = params
        self.grads = [p.grad for p in params]
        by_key: dict[tuple, _Group] = {}
        for p in params:
            key = (p.device, p.grad.dtype, p.dtype)
            if key not in by_key:
                by_key[key] = _Group()
            by_key[key].add(p)
        self.groups = list(by_key.values())
        self.total = sum(g.n_units for g in self.groups)
        self.compiled = False
        if compile:
            for grp in self.groups:
                # dynamic=False: shapes are fixed for a fit; clip_factor/eps are constants here.
                grp.fn = torch.compile(_group_clip, dynamic=False, fullgraph=False)
            self.compiled = True

    def valid_for(self, params: list[torch.Tensor]) -> bool:
        """Same parameters (by identity) and gradients of the same dtype and device; new gradient
        objects (set-to-None zeroing) are rebound in place."""
        if len(params) != len(self.params):
            return False
        stale = False
        for p, q, g in zip(params, self.params, self.grads):
            if p is not q:
                return False
            if p.grad is not g:
                if p.grad.dtype != g.dtype or p.grad.device != g.device:
                    return False
                stale = True
        if stale:
            self.grads = [p.grad for p in params]
            for grp in self.groups:
                grp.rebind()
        return True


class Clipper:
    """AGC for one training run: owns the cached plan of its parameter list (rebuilt when the
    list or its gradients' dtype/device change, rebound when only the gradient objects do) and whether compiling the kernels failed. State lives
    here, in the object a caller keeps (the fastai callback), never in module globals, so one
    fit's parameters are not kept alive by, or leak into, the next."""

    def __init__(self, compile: bool = False) -> None:
        self.compile = compile
        self.compile_broken = False
        self._plan: _Plan | None = None

    @torch.no_grad()
    def __call__(self, params: Iterable[torch.Tensor], clip_factor: float,
                 eps: float = 1e-3) -> tuple[torch.Tensor | None, int]:
        """Clip `p.grad` in place for every parameter with a gradient.

        Returns (number of clipped units as a 0-d device tensor or None if nothing had a
        gradient, total number of units considered). With `compile=True` the kernels are
        torch.compile'd (intended for CUDA); if compiling or running them fails, this Clipper
        falls back to the eager path for good.
        """
        ps = [p for p in params if p.grad is not None]
        if not ps:
            return None, 0
        compile = self.compile and not self.compile_broken
        plan = self._plan
        if plan is None or plan.compiled != compile or not plan.valid_for(ps):
            plan = self._plan = _Plan(ps, compile)
        clipped: torch.Tensor | None = None
        for grp in plan.groups:
            try:
                n = grp.run(clip_factor, eps)
            except Exception:
                if not plan.compiled:
                    raise
                # Compilation happens before the compiled function touches any gradient, so
                # running this group eagerly is exact. Stay eager from now on (no retry every step).
                self.compile_broken = True
                for g in plan.groups:
                    g.fn = _group_clip
                plan.compiled = False
                n = grp.run(clip_factor, eps)
            clipped = n if clipped is None else clipped + n
        return clipped, plan.total


def clip_(
    params: Iterable[torch.Tensor], clip_factor: float, eps: float = 1e-3, *, compile: bool = False
) -> tuple[torch.Tensor | None, int]:
    """One-off clip (a fresh plan each call); training keeps a `Clipper` instead."""
    return Clipper(compile)(params, clip_factor, eps)


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
