"""Registries of the training variants nfx offers: AGC modes, augmentation presets and per-sample
AGC implementations. One entry owns everything about its variant — the CLI's wording, its
cross-field rules, the callback or transforms it builds, its wording in logs and MODEL.md — and
config validation and the CLI's choices read the registry keys. Adding a variant is one
`register_*` call (README, "Development").

Pure: the builders import torch / fastai / albumentations when called, never at import time, so
the config and the CLI can read the registries cheaply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AGCContext:
    """What an AGC mode's builder gets from build_learner."""

    model: Any
    body: list[Any]  # the clipped parameters (the head excluded by identity)
    clip_factor: float | None  # λ; None = AGC off
    accum_cb: Any  # nfx's MicroBatchAccumulation or None
    chunk: int | None = None  # per-sample: samples per vmap chunk
    impl: str = "auto"  # per-sample implementation (PERSAMPLE_IMPLS)
    note: Callable[[str], Any] | None = None


@dataclass(frozen=True)
class AGCMode:
    """`build` returns a fastai callback with the AGC statistics nfx logs — `n_calls`, `epoch_fraction`
    and `epoch_min_step_fraction` (nfx.train.callbacks.AGCCallback has them; subclass it) — or None."""

    name: str
    help: str  # `--agc-mode` wording
    clipped: str  # what the clip fraction counts, in logs ("units", "(sample, unit) pairs")
    card: str  # its wording in MODEL.md
    build: Callable[[AGCContext], Any]  # the callback (None when AGC is off)
    # cross-field rule: (clip factor, torch.compile?) -> error message or None
    check: Callable[[float | None, bool], str | None] = lambda agc, compiled: None
    per_sample: bool = False  # clips each sample's own gradient (so a MixUp-blended sample is refused)


@dataclass(frozen=True)
class AugPreset:
    name: str
    help: str
    build: Callable[[bool], list[Any]]  # flip -> albumentations transforms, after the flip
    flips: bool = True  # a horizontal flip comes first unless --no-flip


@dataclass(frozen=True)
class OptimizerChoice:
    name: str
    help: str  # `--optimizer` wording
    card: str  # its wording in MODEL.md
    build: Callable[[], Any]  # -> a fastai opt_func


@dataclass(frozen=True)
class PerSampleImpl:
    name: str
    help: str


AGC_MODES: dict[str, AGCMode] = {}
AUG_PRESETS: dict[str, AugPreset] = {}
PERSAMPLE_IMPLS: dict[str, PerSampleImpl] = {}
OPTIMIZERS: dict[str, OptimizerChoice] = {}


def register_agc_mode(mode: AGCMode) -> AGCMode:
    AGC_MODES[mode.name] = mode
    return mode


def register_aug_preset(preset: AugPreset) -> AugPreset:
    AUG_PRESETS[preset.name] = preset
    return preset


def register_optimizer(choice: OptimizerChoice) -> OptimizerChoice:
    OPTIMIZERS[choice.name] = choice
    return choice


def register_persample_impl(impl: PerSampleImpl) -> PerSampleImpl:
    PERSAMPLE_IMPLS[impl.name] = impl
    return impl


def choices(registry: Any) -> str:
    """'a, b or c' from a registry's keys, or any sequence of names (help texts and error messages)."""
    keys = list(registry)
    return keys[0] if len(keys) == 1 else f"{', '.join(keys[:-1])} or {keys[-1]}"


# ---------------------------------------------------------------------------------------------
# AGC modes
# ---------------------------------------------------------------------------------------------
def _batch_agc(ctx: AGCContext) -> Any:
    from nfx.train.callbacks import AGCCallback

    return AGCCallback(ctx.clip_factor, params=ctx.body, column=None) if ctx.clip_factor else None


def _persample_agc(ctx: AGCContext) -> Any:
    from nfx.train.persample_cb import PerSampleAGCCallback

    # replaces the backward pass; the batch-mode AGCCallback is not installed with it
    return PerSampleAGCCallback(ctx.model, ctx.body, ctx.clip_factor, chunk=ctx.chunk, accum_cb=ctx.accum_cb,
                                impl=ctx.impl, note=ctx.note)


def _persample_check(agc: float | None, compiled: bool) -> str | None:
    if compiled:  # its taps / torch.func run the eager model
        return "--compile with --agc-mode per-sample is not supported; drop one of them"
    if not agc:
        return ("--agc-mode per-sample clips each sample's gradient and needs AGC on; pass --agc auto or a clip "
                "factor, or use --agc-mode batch")
    return None


register_agc_mode(AGCMode("batch", "clip the mean gradient", "units", "batch", _batch_agc))
register_agc_mode(AGCMode("per-sample", "clip each sample's", "(sample, unit) pairs", "per-sample",
                          _persample_agc, _persample_check, per_sample=True))

# ---------------------------------------------------------------------------------------------
# optimisers (nfx.train.optim)
# ---------------------------------------------------------------------------------------------
def _adam() -> Any:
    from nfx.train.optim import fused_adam

    return fused_adam


def _sgd() -> Any:
    from nfx.train.optim import sgd_nesterov

    return sgd_nesterov


register_optimizer(OptimizerChoice("adam", "AdamW: fastai's Adam on torch's fused kernel", "AdamW", _adam))
register_optimizer(OptimizerChoice("sgd", "SGD with Nesterov momentum, the NFNet paper's optimiser: give it a far "
                                          "larger --lr, e.g. 0.05-0.1", "SGD with Nesterov momentum", _sgd))

# ---------------------------------------------------------------------------------------------
# augmentation presets (nfx.data.augment builds the Compose; flip first when asked)
# ---------------------------------------------------------------------------------------------


def _light(flip: bool) -> list[Any]:
    import albumentations as A

    return [A.Affine(scale=(0.95, 1.05), translate_percent=(-0.03, 0.03), rotate=(-10, 10), border_mode=0, fill=0,
                     p=0.7),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5)]


def clahe_on_float(p: float = 0.3, clip_limit: float = 2.0, tile: int = 8) -> Any:
    """CLAHE for float [0, 1] images: to uint8, CLAHE, back to float32 [0, 1]."""
    import albumentations as A

    return A.Sequential(
        [
            A.FromFloat(max_value=255, p=1.0),  # float [0,1] → uint8 [0,255]
            A.CLAHE(clip_limit=(1.0, clip_limit), tile_grid_size=(tile, tile), p=1.0),
            A.ToFloat(max_value=255, p=1.0),
        ],
        p=p,
    )


def _strong(flip: bool) -> list[Any]:
    import albumentations as A

    return [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-20, 20), border_mode=0, fill=0,
                     p=0.8),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.7),
            A.RandomGamma(gamma_limit=(80, 120), p=0.3),
            A.GaussianBlur(blur_limit=(3, 5), p=0.2),
            clahe_on_float(p=0.3)]


register_aug_preset(AugPreset("none", "no augmentation", lambda flip: [], flips=False))
register_aug_preset(AugPreset("light", "flip, small affine, brightness/contrast ±10%", _light))
register_aug_preset(AugPreset("strong", "flip, affine ±20°, brightness/contrast ±20%, gamma, blur, CLAHE", _strong))

# ---------------------------------------------------------------------------------------------
# per-sample AGC implementations (nfx.train.persample_cb dispatches on the name)
# ---------------------------------------------------------------------------------------------
register_persample_impl(PerSampleImpl("auto", "one backward pass; vmap where a layer is not covered"))
register_persample_impl(PerSampleImpl("one-pass", "one backward pass with per-sample taps"))
register_persample_impl(PerSampleImpl("vmap", "the torch.func reference"))
