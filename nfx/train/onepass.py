"""Per-sample AGC in one ordinary backward pass (the default per-sample implementation).

The same result as the torch.func reference (nfx.train.persample): for every sample b and unit u
of a clipped parameter, g_bu ← g_bu · min(1, λ · max(‖W_u‖, eps) / ‖g_bu‖), the parameter's
gradient is the (weighted) mean over samples, the head gets the plain mean. But instead of
materialising every sample's full gradient, each clipped layer is replaced, for the duration of
a training forward, by a tap (nfx.train.onepass_layers) whose backward computes the layer's
per-sample unit norms from its input and output gradient and returns the clipped sum as the
parameter's gradient; the gradient it passes to earlier layers is the ordinary one. So a step
is one forward and one backward, autograd accumulates into `p.grad` (accumulation, fp16
GradScaler and DDP's all-reduce hooks work unchanged), and the extra memory is one layer's
per-sample quantities at a time.

Covered (exact module types, so a subclass with its own forward is not silently assumed):
nn.Conv1d/Conv2d (any groups, zero padding), nn.Linear, timm's StdConv2d[Same] and
ScaledStdConv2d[Same] (weight standardisation and gain), and 0-d parameters of any module
(timm's skipinit_gain), which are repeated along the batch so each copy collects one sample's
gradient. Anything else holding a clipped parameter makes `unsupported()` name it; the caller
then uses the torch.func implementation with a one-line note. Before first use `check()` runs
the model with and without taps on a few samples and compares the outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from nfx.train.onepass_layers import ClipState, LayerSpec, LayerTap, ScalarTap
from nfx.train.persample import ClipperBase

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _timm_std_types() -> dict[type, bool]:
    """timm's weight-standardised convs → has a gain."""
    try:
        from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
    except ImportError:  # pragma: no cover - timm is a dependency
        return {}
    return {ScaledStdConv2d: True, ScaledStdConv2dSame: True, StdConv2d: False, StdConv2dSame: False}


def _spec(name: str, mod: nn.Module, clip_ids: set[int]) -> LayerSpec | str:
    """A LayerSpec, or why this module cannot be tapped."""
    params = dict(mod.named_parameters(recurse=False))
    clip = {n: id(p) in clip_ids for n, p in params.items()}
    std = _timm_std_types()
    kind = type(mod)
    if kind is nn.Linear:
        return LayerSpec(name, "linear", clip)
    if kind not in (nn.Conv1d, nn.Conv2d) and kind not in std:
        return f"{name} ({kind.__name__})"
    if mod.padding_mode != "zeros" or isinstance(mod.padding, str) or set(params) - {"weight", "bias", "gain"}:
        return f"{name} ({kind.__name__} with padding {mod.padding!r}/{mod.padding_mode})"
    has_gain = std.get(kind, False)
    if ("gain" in params) != has_gain:
        return f"{name} ({kind.__name__} with an unexpected gain)"
    return LayerSpec(name, "conv", clip, stride=tuple(mod.stride), padding=tuple(mod.padding),
                     dilation=tuple(mod.dilation), groups=mod.groups, kernel=tuple(mod.kernel_size),
                     same_pad=bool(getattr(mod, "same_pad", False)), std=kind in std,
                     scale=float(getattr(mod, "scale", 1.0)), std_eps=float(getattr(mod, "eps", 0.0)))


def _layer_forward(mod: nn.Module, spec: LayerSpec, st: ClipState, x: torch.Tensor) -> torch.Tensor:
    if spec.same_pad:
        x = spec.pad_same(x)
    return LayerTap.apply(x, mod.weight, mod.bias, getattr(mod, "gain", None), spec, st)


class OnePassPerSampleAGC(ClipperBase):
    """Per-sample AGC with one backward pass. `clip_params` (the body, by identity) are clipped
    per sample; every other trainable parameter gets the plain mean."""

    def __init__(self, model: nn.Module, clip_params: Iterable[torch.Tensor], clip_factor: float,
                 eps: float = 1e-3, path: str = "auto"):
        super().__init__(model, clip_params)
        self.state = ClipState(float(clip_factor), float(eps), path)
        self.layers: list[tuple[nn.Module, LayerSpec]] = []
        self.scalars: list[tuple[nn.Module, str, bool]] = []  # module, 0-d parameter name, clipped
        self._unsupported: list[str] = []
        for name, mod in model.named_modules():
            params = dict(mod.named_parameters(recurse=False))
            if not any(id(p) in self.clip_ids for p in params.values()):
                continue  # the head and parameter-free modules run as usual
            if params and all(p.ndim == 0 for p in params.values()):
                self.scalars += [(mod, n, id(p) in self.clip_ids) for n, p in params.items()]
                continue
            spec = _spec(name, mod, self.clip_ids)
            if isinstance(spec, str):
                self._unsupported.append(spec)
            else:
                self.layers.append((mod, spec))
        self._handles: list[Any] = []
        self._patched: list[nn.Module] = []
        self._shadowed: list[tuple[nn.Module, str]] = []  # (module, 0-d parameter) shadowed in forward

    # -- public -----------------------------------------------------------------------------
    def unsupported(self) -> list[str]:
        """Modules holding a clipped parameter that no tap covers (empty: this class applies)."""
        return list(self._unsupported)

    def install(self, batch: int) -> None:
        """Replace the clipped layers' forwards by taps until `remove()` (idempotent)."""
        if self._patched or self._handles:
            return
        st = self.state
        for mod, spec in self.layers:
            if any(p.requires_grad for p in mod.parameters(recurse=False)):
                mod.forward = functools.partial(_layer_forward, mod, spec, st)
                self._patched.append(mod)
        for mod, name, clip in self.scalars:
            p = getattr(mod, name)
            if not p.requires_grad:
                continue

            def pre(m: nn.Module, args: tuple, *, _name=name, _p=p, _clip=clip) -> None:
                x = args[0]
                # an instance attribute shadows the registered parameter inside forward only
                m.__dict__[_name] = ScalarTap.apply(_p, x.shape[0], x.ndim, _clip, st)

            def post(m: nn.Module, args: tuple, out: Any, *, _name=name) -> None:
                m.__dict__.pop(_name, None)

            self._handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
            self._shadowed.append((mod, name))

    def remove(self) -> None:
        for mod in self._patched:
            mod.__dict__.pop("forward", None)
        for h in self._handles:
            h.remove()
        for mod, name in self._shadowed:
            mod.__dict__.pop(name, None)
        self._patched, self._handles, self._shadowed = [], [], []

    def check(self, x: torch.Tensor, rtol: float = 1e-4) -> str | None:
        """Compare the model's eval-mode output with and without taps on `x` (a few samples, float32,
        no autocast). None when they agree, else the reason."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                ref = self.model(x).float()
                self.install(x.shape[0])
                try:
                    got = self.model(x).float()
                finally:
                    self.remove()
        except Exception as e:  # a tap that does not fit the module's forward
            return f"the model's forward does not run with the taps ({type(e).__name__}: {e})"
        finally:
            self.model.train(was_training)
        if got.shape != ref.shape:
            return f"output shape {tuple(got.shape)} with taps vs {tuple(ref.shape)}"
        err = float((got - ref).abs().max())
        tol = rtol * max(float(ref.abs().max()), 1.0)
        if not err <= tol:
            return f"outputs differ by {err:.3g} with taps (tolerance {tol:.3g})"
        return None

    def backward_(self, out: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, *, weight: float = 1.0,
                  loss_scale: torch.Tensor | None = None,
                  sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Backpropagate `weight · mean_b L_b` (× loss_scale) from `out`, the output of a forward
        run with taps installed: adds `weight · mean_b clip(g_b)` to the gradients.
        Returns (clipped (sample, unit) pairs as a 0-d tensor, number of (sample, unit) pairs)."""
        from torch.func import vmap

        batch = out.shape[0]
        losses = vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)).float())(out, y)
        if sample_weight is not None:
            losses = losses * sample_weight
        k: Any = float(weight)
        if loss_scale is not None:
            k = loss_scale.float() * weight
        st = self.state
        st.inv = batch / k
        st.clipped = torch.zeros((), dtype=torch.int64, device=out.device)
        (losses.sum() * (k / batch)).backward()
        return st.clipped, self.units() * batch

    def accumulate_(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, *, weight: float = 1.0,
                    loss_scale: torch.Tensor | None = None, autocast_dtype: torch.dtype | None = None,
                    sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Forward with taps and backward: the interface of nfx.train.persample.PerSampleAGC."""
        self.install(x.shape[0])
        try:
            with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = self.model(x)
        finally:
            self.remove()
        return self.backward_(out, y, loss_fn, weight=weight, loss_scale=loss_scale,
                              sample_weight=sample_weight)

    def flush_(self) -> None:
        """Nothing to flush: gradients go straight into `p.grad` (same interface as PerSampleAGC)."""


__all__ = ["OnePassPerSampleAGC"]
