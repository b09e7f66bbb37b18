"""albumentations presets, safe for medical images. Validation/test images are never augmented
(they are only resized, once, by the cache, with the run's resize policy).

- none:   nothing
- light:  horizontal flip (fundus: OD/OS mirror; DataConfig.flip=False / --no-flip for chest
          X-rays, where the heart's side matters), small affine (±10°, ±5% scale, ±3% shift,
          zero fill), brightness/contrast ±10%
- strong: flip as above, affine (±20°, ±10% scale, ±5% shift), brightness/contrast ±20%,
          gamma 0.8–1.2, light gaussian blur, and CLAHE (p=0.3). Nothing that erases anatomy
          (no cutout/dropout), no vertical flips, no colour shifts that invent pathology.

Input and output: float32 H×W×C in [0, 1] (the decoded-image contract). CLAHE is defined on
integers (albumentations/OpenCV accept uint8), so it runs inside a float → uint8 → CLAHE →
float sequence that applies only when CLAHE fires (the quantisation costs < 1/255).
The preset and flip setting are in config.json (data.aug, data.flip); `describe` lists the
resolved transforms.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would contact PyPI on import

from nfx.variants import AUG_PRESETS, choices, clahe_on_float  # noqa: E402,F401  (augment.clahe_on_float)


def describe(preset: str, flip: bool = True) -> list[str]:
    """Human-readable list of the transforms of a preset (for logs and reports)."""
    if preset == "none":
        return []
    return [_name(t) for t in build(preset, flip).transforms]


def _name(t: Any) -> str:
    inner = getattr(t, "transforms", None)
    if inner is not None:
        return f"{type(t).__name__}(p={t.p})[" + ", ".join(_name(x) for x in inner) + "]"
    return repr(t)


def build(preset: str, flip: bool = True) -> Any:
    """The preset's albumentations Compose (nfx.variants.AUG_PRESETS): a horizontal flip first when the
    preset flips and `flip` is on, then the preset's transforms."""
    import albumentations as A

    if preset not in AUG_PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; use {choices(AUG_PRESETS)}")
    p = AUG_PRESETS[preset]
    return A.Compose(([A.HorizontalFlip(p=0.5)] if flip and p.flips else []) + p.build(flip))
