"""Per-sample Adaptive Gradient Clipping. Pure torch (torch.func): no fastai import.

For every sample i of a micro-batch and every unit u of a clipped parameter:
    g_iu ← g_iu · min(1, λ · max(‖W_u‖, eps) / ‖g_iu‖)
and the parameter's gradient receives the mean over samples, (1/B) Σ_i g_i. Parameters that are
not clipped (the classifier head) receive the plain mean gradient. Units are those of
`nfx.train.agc` (rows / output filters; 0-d and 1-d tensors are one unit).

How: `torch.func.vmap(grad(loss of one sample))` over chunks of the micro-batch, with the
model's stored parameters passed through `functional_call`. Consequences worth knowing:
- Weight-standardised convolutions (timm's ScaledStdConv2d[Same]) standardise the stored weight
  inside forward, so the per-sample gradient is taken with respect to the stored parameter, as
  the optimizer needs. 0-d parameters (`skipinit_gain`) are ordinary entries of the dict.
- Randomness (dropout, drop-path) uses vmap's `randomness="different"`: every sample draws its
  own mask, as it would in a normal batch (the random stream differs from a batched forward).
- BatchNorm in training mode mixes the samples of a batch, so a per-sample gradient does not
  exist: such models are refused (`ModelError`).
- Gradients are accumulated in float32: into `p.grad` when the parameter is float32 (the usual
  case, also under autocast), otherwise into a float32 side buffer that `flush_()` adds to
  `p.grad`. Each call *adds* `weight · mean_i clip(g_i)`, so gradient accumulation composes:
  a window of k micro-batches passes weight 1/k each.
- fp16 loss scaling: pass `loss_scale` (the GradScaler's scale). Per-sample gradients are
  computed on the scaled loss, unscaled in fp32 before clipping, and the result is written back
  multiplied by the scale, so the GradScaler's own `unscale_` / inf check work unchanged
  (a non-finite per-sample gradient turns into NaN in the sum and the step is skipped).
- Memory: per-sample gradients of a whole chunk exist at once (chunk × trainable parameters ×
  4 bytes, plus the chunk's activations). The chunk is chosen from free memory (CUDA: measured
  with a one-sample probe; CPU: MemAvailable and a parameter-size estimate) unless given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.func import functional_call, grad, vmap

from nfx.errors import ModelError
from nfx.train.agc import count_units

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def refuse_batchnorm(model: torch.nn.Module) -> None:
    bn = [n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bn:
        raise ModelError(
            f"per-sample AGC cannot be used with this model: it has {len(bn)} BatchNorm layer(s) "
            f"(e.g. {bn[0]!r}), and with BatchNorm a sample's output depends on its batch-mates, so a "
            "per-sample gradient is not defined. Use --agc-mode batch, or a normalizer-free "
            "architecture (dm_nfnet_f0, eca_nfnet_l0, nf_resnet50, ...)."
        )


def per_sample_grads(model: torch.nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                     names: list[str], *, loss_scale: torch.Tensor | None = None,
                     sample_weight: torch.Tensor | None = None,
                     randomness: str = "different") -> dict[str, torch.Tensor]:
    """{name: (B, *param.shape)} gradients of each sample's loss w.r.t. the named parameters.

    The loss of sample i is `loss_fn(model(x[i:i+1]), y[i:i+1])` (times `sample_weight[i]` and
    `loss_scale` when given). Parameters not in `names` and buffers are held constant.
    """
    named = dict(model.named_parameters())
    train = {n: named[n].detach() for n in names}
    const = {n: p.detach() for n, p in named.items() if n not in train}
    const.update(dict(model.named_buffers()))

    def loss_one(params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor,
                 wi: torch.Tensor | None) -> torch.Tensor:
        out = functional_call(model, ({**params, **const},), (xi.unsqueeze(0),))
        loss = loss_fn(out, yi.unsqueeze(0)).float()
        if wi is not None:
            loss = loss * wi
        if loss_scale is not None:
            loss = loss * loss_scale
        return loss

    in_dims = (None, 0, 0, 0 if sample_weight is not None else None)
    return vmap(grad(loss_one), in_dims=in_dims, randomness=randomness)(train, x, y, sample_weight)


def clip_per_sample_(grads: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                     clip_factor: float, eps: float = 1e-3) -> torch.Tensor:
    """Scale per-sample gradients {name: (B, *shape)} in place, unit-wise per sample.

    Only the names in `weights` are clipped (bound from the stored weight). Returns the number
    of clipped (sample, unit) pairs as a 0-d tensor (no host sync).
    """
    n_clipped = torch.zeros((), dtype=torch.int64, device=next(iter(grads.values())).device)
    for name, w in weights.items():
        g = grads[name]
        if w.ndim <= 1:
            w_norm = torch.linalg.vector_norm(w, dtype=torch.float32).reshape(1, 1)
            g_norm = torch.linalg.vector_norm(g.reshape(g.shape[0], 1, -1), dim=2, dtype=torch.float32)
        else:
            w_norm = torch.linalg.vector_norm(w, dim=tuple(range(1, w.ndim)), dtype=torch.float32)[None]
            g_norm = torch.linalg.vector_norm(g, dim=tuple(range(2, g.ndim)), dtype=torch.float32)
        max_norm = w_norm.clamp_min(eps) * clip_factor  # (1, units)
        trigger = g_norm > max_norm  # (B, units)
        scale = torch.where(trigger, max_norm / g_norm.clamp_min(1e-6), torch.ones_like(g_norm))
        bshape = g.shape[:1] + ((1,) * w.ndim if w.ndim <= 1 else (g.shape[1],) + (1,) * (w.ndim - 1))
        g.mul_(scale.reshape(bshape))
        n_clipped += trigger.sum()
    return n_clipped


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


class ClipperBase:
    """What both per-sample implementations share: the model (BatchNorm refused), the clipped
    parameters by identity, and which of them are trainable now."""

    def __init__(self, model: torch.nn.Module, clip_params: Iterable[torch.Tensor]):
        refuse_batchnorm(model)
        self.model = model
        self.clip_ids = {id(p) for p in clip_params}

    def trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def any_clipped_trainable(self) -> bool:
        return any(id(p) in self.clip_ids for _, p in self.trainable())

    def units(self) -> int:
        return count_units(p for _, p in self.trainable() if id(p) in self.clip_ids)


class PerSampleAGC(ClipperBase):
    """Adds per-sample-clipped mean gradients of micro-batches into the model's gradients.

    `clip_params` (the body, selected by identity) are clipped per sample; every other trainable
    parameter gets the plain mean. `chunk` = samples per vmap call (None = automatic).
    """

    def __init__(self, model: torch.nn.Module, clip_params: Iterable[torch.Tensor], clip_factor: float,
                 eps: float = 1e-3, chunk: int | None = None, memory_fraction: float = 0.6,
                 randomness: str = "different"):
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1 (got {chunk})")
        super().__init__(model, clip_params)
        self.clip_factor, self.eps = float(clip_factor), float(eps)
        self.chunk = chunk
        self.memory_fraction = memory_fraction
        self.randomness = randomness
        self.per_sample_bytes: int | None = None  # measured (CUDA) or estimated (CPU)
        self.last_chunk: int | None = None
        self._side: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id → (param, fp32 buffer)

    # -- public -----------------------------------------------------------------------------
    def accumulate_(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, *, weight: float = 1.0,
                    loss_scale: torch.Tensor | None = None, autocast_dtype: torch.dtype | None = None,
                    sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Add `weight · (1/B) Σ_i clip(g_i)` (× loss_scale) to the gradients.

        Returns (clipped (sample, unit) pairs as a 0-d tensor, number of (sample, unit) pairs).
        """
        named = self.trainable()
        names = [n for n, _ in named]
        batch = x.shape[0]
        clip_w = {n: p.detach() for n, p in named if id(p) in self.clip_ids}
        units = sum(1 if w.ndim <= 1 else w.shape[0] for w in clip_w.values())
        total = torch.zeros((), dtype=torch.int64, device=x.device)
        start = 0
        while start < batch:
            chunk = self._chunk_size(batch - start, x, named, start == 0)
            sl = slice(start, start + chunk)
            probe = x.device.type == "cuda" and self.chunk is None and self.per_sample_bytes is None
            if probe:
                torch.cuda.synchronize(x.device)
                base = torch.cuda.memory_allocated(x.device)
                torch.cuda.reset_peak_memory_stats(x.device)
            with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                grads = per_sample_grads(self.model, loss_fn, x[sl], y[sl], names, loss_scale=loss_scale,
                                         sample_weight=None if sample_weight is None else sample_weight[sl],
                                         randomness=self.randomness)
            if loss_scale is not None:
                inv = 1.0 / loss_scale.float()
                for g in grads.values():
                    g.mul_(inv)  # clip unscaled gradients
            total += clip_per_sample_(grads, clip_w, self.clip_factor, self.eps)
            factor = weight / batch
            for n, p in named:
                g = grads.pop(n)
                s = g.sum(0, dtype=torch.float32)
                if loss_scale is not None:
                    s.mul_(loss_scale.float())
                self._target(p).add_(s, alpha=factor)
                del g, s
            if probe:
                torch.cuda.synchronize(x.device)
                self.per_sample_bytes = max(1, (torch.cuda.max_memory_allocated(x.device) - base) // chunk)
            start += chunk
        return total, units * batch

    def flush_(self) -> None:
        """Add the float32 side buffers (parameters that are not float32) into `p.grad`."""
        for p, buf in self._side.values():
            if p.grad is None:
                p.grad = buf.to(p.dtype)
            else:
                p.grad.add_(buf.to(p.grad.dtype))
            buf.zero_()

    # -- internals ----------------------------------------------------------------------------
    def _target(self, p: torch.Tensor) -> torch.Tensor:
        if p.dtype == torch.float32:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            return p.grad
        entry = self._side.get(id(p))
        if entry is None or entry[0] is not p:
            entry = self._side[id(p)] = (p, torch.zeros_like(p, dtype=torch.float32))
        return entry[1]

    def _chunk_size(self, remaining: int, x: torch.Tensor, named: list, first: bool) -> int:
        if self.chunk is not None:
            c = self.chunk
        elif x.device.type == "cuda" and self.per_sample_bytes is None:
            c = 1  # probe: measure what one sample costs, then size the chunks from free memory
        else:
            per = self.per_sample_bytes or self._estimate_cpu_bytes(x, named)
            c = int(self.memory_fraction * free_memory_bytes(x.device) // max(per, 1))
        c = max(1, min(c, remaining))
        self.last_chunk = c
        return c

    @staticmethod
    def _estimate_cpu_bytes(x: torch.Tensor, named: list) -> int:
        # per-sample gradients (fp32) ×3 (vmap output, the scaled copy, temporaries) plus a
        # generous allowance for one sample's activations (~200 feature maps of the input size).
        n_params = sum(p.numel() for _, p in named)
        return 12 * n_params + 800 * x[0].numel() * 4


def reference_clipped_mean(model: torch.nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                           clip_params: Iterable[torch.Tensor], clip_factor: float,
                           eps: float = 1e-3) -> dict[str, torch.Tensor]:
    """Straightforward definition (one autograd backward per sample, the paper's formula);
    for tests and benchmarks. Returns {name: mean clipped gradient} for trainable parameters."""
    clip_ids = {id(p) for p in clip_params}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named}
    for i in range(x.shape[0]):
        loss = loss_fn(model(x[i:i + 1]), y[i:i + 1])
        gs = torch.autograd.grad(loss, [p for _, p in named])
        for (n, p), g in zip(named, gs):
            g = g.float()
            if id(p) in clip_ids:
                dims: Any = tuple(range(1, g.ndim)) if g.ndim > 1 else None
                w_norm = (torch.linalg.vector_norm(p.detach().float(), dim=dims, keepdim=True)
                          .clamp_min(eps))
                g_norm = torch.linalg.vector_norm(g, dim=dims, keepdim=True)
                g = g * torch.clamp(clip_factor * w_norm / g_norm.clamp_min(1e-6), max=1.0)
            out[n] += g / x.shape[0]
    return out


__all__ = ["ClipperBase", "PerSampleAGC", "clip_per_sample_", "per_sample_grads", "reference_clipped_mean",
           "refuse_batchnorm", "free_memory_bytes"]
