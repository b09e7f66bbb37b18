"""fastai wiring: a plain Learner around a timm model (timm's own head, no BatchNorm added),
body/head splitter by identity, weight-decay exemptions, precision, accumulation, AGC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nfx.models.factory import head_and_body, no_decay_params
from nfx.train.accumulation import MicroBatchAccumulation
from nfx.train.callbacks import AGCCallback, EagerValidation, StopOnNaN


def resolve_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_precision(requested: str, device: torch.device, warn) -> str:
    if device.type != "cuda":
        if requested in ("bf16", "fp16"):
            warn(f"--precision {requested} needs a CUDA GPU; training in fp32 on the CPU")
        return "fp32"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested


@dataclass
class Wiring:
    learn: Any
    agc_cb: AGCCallback | None
    accum_cb: MicroBatchAccumulation | None


def _weights(w: list[float] | None, device: torch.device) -> torch.Tensor | None:
    return None if w is None else torch.tensor(w, dtype=torch.float32, device=device)


def splitter_for(model: Any):
    """fastai splitter: [body params, head params]; freeze() then trains only the head."""

    def split(m: Any) -> list[list[Any]]:
        head, body = head_and_body(m)
        return [body, head]

    return split


def build_learner(dls, model, *, num_classes: int, wd: float, precision: str, accum: int,
                  agc: float | None, device: torch.device, opt_func: Any = None,
                  class_weights: list[float] | None = None, agc_mode: str = "batch",
                  persample_chunk: int | None = None, compile_model: bool = False,
                  persample_impl: str = "auto", note: Any = None, label_smoothing: float = 0.0,
                  mixup: float = 0.0, cutmix: float = 0.0) -> Wiring:
    import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
    from fastai.callback.fp16 import MixedPrecision
    from fastai.callback.progress import ProgressCallback
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import RocAuc, RocAucBinary, accuracy

    from nfx.train.optim import fused_adam

    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    from nfx.config import check_agc_mode

    check_agc_mode(agc_mode, agc, compile_model)  # also checked before any work, in finetune
    if compile_model:
        # in place (nn.Module.compile): parameters, state_dict keys and the head's identity stay the same
        model.compile()
    metrics = [accuracy, RocAucBinary() if num_classes == 2 else RocAuc()]
    cbs: list[Any] = [StopOnNaN()] + ([EagerValidation()] if compile_model else [])
    accum_cb = MicroBatchAccumulation(accum) if accum > 1 else None
    if accum_cb:
        cbs.append(accum_cb)
    if mixup:
        from fastai.callback.mixup import MixUp

        cbs.append(MixUp(mixup))  # mixes each micro-batch; under accumulation each one is mixed alone
    if cutmix:
        from fastai.callback.mixup import CutMix

        cbs.append(CutMix(cutmix))  # as MixUp: within each micro-batch
    if precision in ("bf16", "fp16"):
        cbs.append(MixedPrecision(amp_mode=precision))
    _head, body = head_and_body(model)
    from nfx.variants import AGC_MODES, AGCContext

    agc_cb = AGC_MODES[agc_mode].build(AGCContext(model, body, agc, accum_cb, persample_chunk, persample_impl, note))
    if agc_cb:
        cbs.append(agc_cb)
    learn = Learner(
        dls, model, loss_func=CrossEntropyLossFlat(weight=_weights(class_weights, device), label_smoothing=label_smoothing),
        opt_func=opt_func or fused_adam, metrics=metrics,
        splitter=splitter_for(model), wd=wd, wd_bn_bias=False, train_bn=True, cbs=cbs,
    )
    learn.remove_cb(ProgressCallback)  # rich progress comes from nfx's own callback
    learn.logger = lambda *a, **k: None  # the Recorder would print raw lists; EpochLog prints
    learn.create_opt()
    for p in no_decay_params(model):
        learn.opt.state[p]["do_wd"] = False
    return Wiring(learn, agc_cb, accum_cb)
