"""Resize policies: how a decoded image of any shape becomes the model's size×size input.

One function, `resize(img, size, policy)`, used by the cache for training, evaluation, predict,
explain and (through the policy name stored in the ONNX metadata) by anyone reproducing nfx's
preprocessing without nfx:

- ``squish``: both sides scaled to `size` independently (aspect ratio not kept, nothing lost);
  fastai's ``Resize(method='squish')``.
- ``letterbox``: longest side → `size`, aspect ratio kept, zero padding to a centred square
  (whole field of view, smaller anatomy).
- ``crop``: shortest side → `size`, then a centred size×size crop (aspect ratio kept, the
  borders of the long side are lost).

Pure numpy + OpenCV; input and output follow the decoding contract (float32, H×W×C, [0, 1]).
"""

from __future__ import annotations

import numpy as np

from nfx.data import intensity
from nfx.records import (
    RESIZE_POLICIES,
    check_policy,
    policy_of,  # noqa: F401  (re-exported: the one parser of recorded policies)
)

POLICIES = RESIZE_POLICIES


def _scaled(img: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    shrink = h * w < img.shape[0] * img.shape[1]
    out = cv2.resize(img.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return intensity.as_hwc(out)


def letterbox_box(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of an h×w picture inside its size×size letterbox."""
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return (size - nh) // 2, (size - nw) // 2, nh, nw


def letterbox(img: np.ndarray, size: int) -> np.ndarray:
    top, left, nh, nw = letterbox_box(img.shape[0], img.shape[1], size)
    out = np.zeros((size, size, img.shape[2]), dtype=np.float32)
    out[top : top + nh, left : left + nw] = _scaled(img, nh, nw)
    return out


def squish(img: np.ndarray, size: int) -> np.ndarray:
    return _scaled(img, size, size)


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    return _scaled(img, nh, nw)[top : top + size, left : left + size]


_FUNCS = {"squish": squish, "letterbox": letterbox, "crop": centre_crop}


def resize(img: np.ndarray, size: int, policy: str) -> np.ndarray:
    """H×W×C float in [0, 1] → size×size×C float32 in [0, 1] by `policy` (one of POLICIES)."""
    fn = _FUNCS[check_policy(policy)]
    return np.clip(fn(intensity.as_hwc(img), int(size)), 0.0, 1.0)
