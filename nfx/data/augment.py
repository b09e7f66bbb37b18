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


def build(preset: str, flip: bool = True) -> Any:
    import albumentations as A

    if preset == "none":
        return A.Compose([])
    ts: list[Any] = []
    if flip:
        ts.append(A.HorizontalFlip(p=0.5))
    if preset == "light":
        ts += [
            A.Affine(scale=(0.95, 1.05), translate_percent=(-0.03, 0.03), rotate=(-10, 10),
                     border_mode=0, fill=0, p=0.7),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
    elif preset == "strong":
        ts += [
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-20, 20),
                     border_mode=0, fill=0, p=0.8),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.7),
            A.RandomGamma(gamma_limit=(80, 120), p=0.3),
            A.GaussianBlur(blur_limit=(3, 5), p=0.2),
            clahe_on_float(p=0.3),
        ]
    else:
        raise ValueError(f"unknown augmentation preset {preset!r}; use none, light or strong")
    return A.Compose(ts)
