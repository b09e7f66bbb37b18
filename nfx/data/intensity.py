"""Pure numpy intensity steps shared by every decoder.

Output contract of decoding (whatever the file type): float32, H×W×C (C = 1 or 3),
values in [0, 1]. Must not import torch, fastai or pydicom.
"""

from __future__ import annotations

import numpy as np

from nfx.records import check_voi


def to_unit_range(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly to [0, 1] (clipping outside) as float32."""
    arr = np.asarray(arr, dtype=np.float64)
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


PERCENTILES = (0.5, 99.5)


def fallback_to_unit(values: np.ndarray, lo: float, hi: float, rule: str) -> np.ndarray:
    """A grayscale image without any VOI → [0, 1] by `rule` (nfx.data.dicom_values): `stored` maps
    the representable range [lo, hi]; `minmax` / `percentile` the image's own range (a constant
    image falls back to `stored`)."""
    if check_voi(rule) != "stored":
        v = np.asarray(values, dtype=np.float64)
        a, b = (float(v.min()), float(v.max())) if rule == "minmax" else map(float, np.percentile(v, PERCENTILES))
        if b > a:
            return to_unit_range(v, a, b)
    return to_unit_range(values, lo, hi)


def invert(unit: np.ndarray) -> np.ndarray:
    """MONOCHROME1 display inversion, applied in [0, 1] space after VOI."""
    return (1.0 - unit).astype(np.float32)


def as_hwc(arr: np.ndarray) -> np.ndarray:
    """H×W → H×W×1; H×W×C unchanged."""
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim == 3:
        return arr
    raise ValueError(f"expected a 2-D or 3-D image array, got shape {arr.shape}")


def to_channels(img: np.ndarray, channels: int = 3) -> np.ndarray:
    """Grey → repeated to `channels`; RGBA → RGB; C == channels unchanged."""
    img = as_hwc(img)
    c = img.shape[2]
    if c == channels:
        return img
    if c == 1:
        return np.repeat(img, channels, axis=2)
    if c == 4 and channels == 3:
        return img[:, :, :3]
    if channels == 1 and c == 3:
        # ITU-R BT.601 luma
        return (img @ np.array([0.299, 0.587, 0.114], dtype=img.dtype))[:, :, None]
    raise ValueError(f"cannot convert {c} channels to {channels}")


def stored_value_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    """The real range of a stored pixel value (from BitsStored, not the container dtype)."""
    if signed:
        return -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    return 0, 2**bits_stored - 1


def normalise(img: np.ndarray, mean, std) -> np.ndarray:
    """H×W×3 in [0, 1] → 3×H×W float32, (x − mean) / std: the exact transform a user of the
    exported ONNX model must apply (mean/std are in the model's metadata)."""
    x = (np.asarray(img, dtype=np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
