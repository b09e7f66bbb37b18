"""albumentations presets, safe for medical images. Validation/test images are never augmented.

- none:   nothing
- light:  horizontal flip (fundus: OD/OS mirror; turn off with --no-flip for chest X-rays,
          where the heart's side matters), small affine (±10°, ±5% scale, ±3% shift),
          brightness/contrast ±10%
- strong: light + larger affine (±20°, ±10%), gamma, gaussian blur, coarse dropout-free
Inputs are float32 H×W×C in [0, 1] (the decoded-image contract); output the same.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would contact PyPI on import


def describe(preset: str, flip: bool = True) -> list[str]:
    return [repr(t) for t in build(preset, flip).transforms] if preset != "none" else []


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
        ]
    else:
        raise ValueError(f"unknown augmentation preset {preset!r}")
    return A.Compose(ts)
