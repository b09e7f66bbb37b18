"""Per-layer maths of one-pass per-sample AGC (see nfx.train.onepass). Pure torch.

A layer's weight gradient is a sum over samples, G = Σ_b G_b, with G_b built from the layer's input
a_b and its output gradient δ_b only. For a conv (and a linear layer: one "position"), with a_b
unfolded into patches P_b (D × T: D = in-channels/groups × kernel elements, T = output positions):

    G_{b,u} = Σ_t δ_{b,u,t} P_{b,:,t}            (unit u = output filter)

so a clipped sum Σ_b c_{b,u} G_{b,u} is the ordinary weight gradient of the output gradient scaled
per (sample, unit) — only for this layer's parameters; the gradient passed to earlier layers is
the ordinary one. Each sample's unit norm comes either from G_b itself ("materialise": B·U·D
numbers, one layer at a time) or from the Gram matrix of its patches ("ghost":
‖G_{b,u}‖² = δ_{b,u}ᵀ (P_bᵀ P_b) δ_{b,u}, B·T² numbers) — whichever needs less memory.

Weight standardisation (timm's StdConv2d / ScaledStdConv2d): the conv uses
Ŵ_u = γ_u s (W_u − μ_u)/σ_u (γ = gain, s = gamma/√fan-in; γ s = 1 without a gain), a map from the
stored W_u whose Jacobian is the same for every sample. With z_u = (W_u − μ_u)/σ_u and n = D:

    ∂L_b/∂W_u = (γ_u s/σ_u) (Ĝ − mean(Ĝ) − z_u · mean(Ĝ ⊙ z_u)),   Ĝ = ∂L_b/∂Ŵ_u
    ∂L_b/∂γ_u = s ⟨Ĝ, z_u⟩

hence ‖∂L_b/∂W_u‖² = (γ_u s/σ_u)² (‖Ĝ‖² − ⟨1,Ĝ⟩²/n − ⟨z_u,Ĝ⟩²/n · (2 − ‖z_u‖²/n)), which the ghost
path evaluates from ⟨1,Ĝ⟩ and ⟨z_u,Ĝ⟩ (both sums over positions of δ times a patch reduction).
All per-sample arithmetic runs in float32 whatever the autocast dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from nfx.train.agc import unitwise_norm


@dataclass
class ClipState:
    """Shared by every tap of one model. `inv` converts a norm computed from the output gradients
    of the loss that is backpropagated into the norm of a sample's own gradient (set per call)."""

    clip_factor: float
    eps: float = 1e-3
    path: str = "auto"  # auto | materialise | ghost (the last two: tests and benchmarks)
    inv: Any = 1.0
    clipped: Any = 0
    chosen: dict = field(default_factory=dict)  # layer name → path used last

    def factors(self, g_norm: torch.Tensor, w_norm: torch.Tensor) -> torch.Tensor:
        """(B, U) clip factors from per-sample unit norms (loss scale) and weight unit norms (U,)."""
        g = g_norm * self.inv
        max_norm = w_norm.clamp_min(self.eps) * self.clip_factor
        trig = g > max_norm
        self.clipped = self.clipped + trig.sum()
        return torch.where(trig, max_norm / g.clamp_min(1e-6), torch.ones_like(g))


@dataclass
class LayerSpec:
    name: str
    kind: str  # conv | linear
    clip: dict  # param name → clipped (True) or plain sum (False)
    stride: tuple = ()
    padding: tuple = ()
    dilation: tuple = ()
    groups: int = 1
    kernel: tuple = ()
    same_pad: bool = False  # TF "SAME" padding computed from the input size (timm *Same convs)
    std: bool = False  # weight standardisation
    scale: float = 1.0  # timm's gamma/√fan-in (ScaledStdConv2d); 1 for StdConv2d
    std_eps: float = 0.0

    def gain_scale(self, gain: torch.Tensor | None, units: int) -> torch.Tensor | float:
        """γ_u·s as (U, 1) float32 (s alone without a gain): Ŵ_u = γ_u·s·z_u."""
        return self.scale * (gain.detach().float().reshape(units, 1) if gain is not None else 1.0)

    def pad_same(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, k, s, d in reversed(list(zip(x.shape[2:], self.kernel, self.stride, self.dilation))):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)

    def patches(self, a: torch.Tensor) -> torch.Tensor:
        """(B, in-channels × kernel elements, T) in float32."""
        a = a.float()
        if self.kind == "linear":
            return a.reshape(a.shape[0], -1, a.shape[-1]).transpose(1, 2)
        if all(k == 1 for k in self.kernel) and all(v == 1 for v in self.stride) and not any(self.padding):
            return a.reshape(a.shape[0], a.shape[1], -1)  # a 1×1 conv's patches are its input
        if len(self.kernel) == 1:
            return F.unfold(a.unsqueeze(2), (1, *self.kernel), dilation=(1, *self.dilation),
                            padding=(0, *self.padding), stride=(1, *self.stride))
        return F.unfold(a, self.kernel, dilation=self.dilation, padding=self.padding, stride=self.stride)

    def output_grads(self, d: torch.Tensor) -> torch.Tensor:
        """(B, U, T) in float32."""
        d = d.float()
        if self.kind == "linear":
            return d.reshape(d.shape[0], -1, d.shape[-1]).transpose(1, 2)
        return d.reshape(d.shape[0], d.shape[1], -1)

    def input_grad(self, a: torch.Tensor, w_eff: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        w_eff = w_eff.to(d.dtype)
        if self.kind == "linear":
            return (d @ w_eff).to(a.dtype)
        fn = torch.nn.grad.conv1d_input if len(self.kernel) == 1 else torch.nn.grad.conv2d_input
        return fn(a.shape, w_eff, d, self.stride, self.padding, self.dilation, self.groups).to(a.dtype)

    def forward(self, a: torch.Tensor, w_eff: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(a, w_eff, bias)
        conv = F.conv1d if len(self.kernel) == 1 else F.conv2d
        return conv(a, w_eff, bias, self.stride, self.padding, self.dilation, self.groups)


def _unit_norms(w: torch.Tensor) -> torch.Tensor:
    """(U,) float32 unit norms of a stored parameter, units as in nfx.train.agc."""
    return unitwise_norm(w.detach().float()).reshape(-1)


def _choose(spec: LayerSpec, st: ClipState, U: int, D: int, T: int) -> str:
    if st.path != "auto":
        return st.path
    materialise = U * D
    ghost = spec.groups * T * T + (U * T if spec.std else 0)
    return "ghost" if ghost < materialise else "materialise"


def standardise(spec: LayerSpec, w: torch.Tensor, gain: torch.Tensor | None):
    """(Ŵ, z, 1/σ) in float32 for a weight-standardised conv; (w, None, None) otherwise."""
    if not spec.std:
        return w, None, None
    U = w.shape[0]
    z, _mean, rstd = torch.native_batch_norm(w.detach().float().reshape(1, U, -1), None, None, None, None,
                                             True, 0.0, spec.std_eps)
    z = z.reshape(U, -1)
    return (z * spec.gain_scale(gain, U)).reshape(w.shape), z, rstd.reshape(U, 1)


def param_grads(spec: LayerSpec, st: ClipState, a: torch.Tensor, d: torch.Tensor, w: torch.Tensor,
                z: torch.Tensor | None, rstd: torch.Tensor | None, bias: torch.Tensor | None,
                gain: torch.Tensor | None, need: tuple[bool, bool, bool]) -> list[torch.Tensor | None]:
    """[weight, bias, gain] gradients: Σ_b c_b ∂L_b/∂p for clipped parameters, Σ_b ∂L_b/∂p else."""
    need_w, need_b, need_g = need
    out: list[torch.Tensor | None] = [None, None, None]
    dT = spec.output_grads(d)
    B, U, T = dT.shape
    g = spec.groups
    if need_b:
        gb = dT.sum(-1)  # (B, U)
        if spec.clip["bias"]:
            c = st.factors(torch.linalg.vector_norm(gb, dim=1, keepdim=True), _unit_norms(bias))
            gb = gb * c
        out[1] = gb.sum(0).to(bias.dtype)
    if not (need_w or need_g):
        return out
    P = spec.patches(a)
    D = P.shape[1] // g
    Pg, dg = P.view(B, g, D, T), dT.view(B, g, U // g, T)
    path = st.chosen[spec.name] = _choose(spec, st, U, D, T)
    G = None
    if path == "materialise":
        G = torch.matmul(dg, Pg.transpose(-1, -2)).reshape(B, U, D)  # each sample's ∂L_b/∂Ŵ
        sq = torch.linalg.vector_norm(G, dim=-1) ** 2
        if spec.std:
            s1 = G.sum(-1)  # ⟨1, Ĝ⟩
            dz = torch.einsum("bud,ud->bu", G, z)  # ⟨z_u, Ĝ⟩
    else:
        K = torch.matmul(Pg.transpose(-1, -2), Pg)  # (B, g, T, T)
        sq = (torch.matmul(dg, K) * dg).sum(-1).reshape(B, U)  # ‖Ĝ_{b,u}‖²
        if spec.std:
            s1 = (dg * Pg.sum(2, keepdim=True)).sum(-1).reshape(B, U)
            dz = (dg * torch.matmul(z.view(g, U // g, D), Pg)).sum(-1).reshape(B, U)
    alpha = None
    if spec.std:
        alpha = spec.gain_scale(gain, U) * rstd  # (U, 1): γ s / σ
        zz = (z * z).sum(-1)
        sq = alpha.reshape(1, U) ** 2 * (sq - s1 ** 2 / D - dz ** 2 / D * (2 - zz / D))  # ‖∂L_b/∂W_u‖²
    if need_w:
        c = st.factors(sq.clamp_min(0).sqrt(), _unit_norms(w)) if spec.clip["weight"] else None
        if G is not None:
            Gc = G.sum(0) if c is None else torch.einsum("bu,bud->ud", c, G)
        else:
            dgc = dg if c is None else dg * c.view(B, g, U // g, 1)
            Gc = torch.einsum("bgut,bgdt->gud", dgc, Pg).reshape(U, D)
        if spec.std:
            Gc = alpha * (Gc - Gc.mean(-1, keepdim=True) - z * (Gc * z).mean(-1, keepdim=True))
        out[0] = Gc.reshape(w.shape).to(w.dtype)
    if need_g:
        gain_ps = spec.scale * dz
        if spec.clip["gain"]:
            gain_ps = gain_ps * st.factors(gain_ps.abs(), _unit_norms(gain))
        out[2] = gain_ps.sum(0).reshape(gain.shape).to(gain.dtype)
    return out


class LayerTap(torch.autograd.Function):
    """A conv/linear layer whose backward returns per-sample-clipped parameter gradients."""

    @staticmethod
    def forward(ctx, a, w, bias, gain, spec: LayerSpec, st: ClipState):  # type: ignore[override]
        w_eff, z, rstd = standardise(spec, w, gain)
        ctx.spec, ctx.st, ctx.z, ctx.rstd = spec, st, z, rstd
        ctx.save_for_backward(a, w, bias, gain)
        return spec.forward(a, w_eff, bias)

    @staticmethod
    def backward(ctx, d):  # type: ignore[override]
        a, w, bias, gain = ctx.saved_tensors
        spec, st, z, rstd = ctx.spec, ctx.st, ctx.z, ctx.rstd
        need = ctx.needs_input_grad
        grad_a = None
        if need[0]:
            w_eff = w if z is None else (z * spec.gain_scale(gain, z.shape[0])).reshape(w.shape)
            grad_a = spec.input_grad(a, w_eff, d)
        gw, gb, gg = param_grads(spec, st, a, d, w, z, rstd, bias, gain, (need[1], need[2], need[3]))
        return grad_a, gw, gb, gg, None, None


class ScalarTap(torch.autograd.Function):
    """A 0-d parameter repeated along the batch, (B, 1, …, 1): each copy's gradient is one
    sample's; backward returns their (clipped) sum. Used where a module multiplies or adds the
    parameter to its batched activations (timm's NormFreeBlock.skipinit_gain)."""

    @staticmethod
    def forward(ctx, p, batch: int, ndim: int, clip: bool, st: ClipState):  # type: ignore[override]
        ctx.st, ctx.clip = st, clip
        ctx.save_for_backward(p)
        return p.detach().reshape((1,) * ndim).repeat((batch,) + (1,) * (ndim - 1))

    @staticmethod
    def backward(ctx, d):  # type: ignore[override]
        (p,) = ctx.saved_tensors
        gb = d.float().reshape(d.shape[0], 1)
        if ctx.clip:
            gb = gb * ctx.st.factors(gb.abs(), _unit_norms(p))
        return gb.sum().reshape(p.shape).to(p.dtype), None, None, None, None
