"""Decoding of ordinary image files (PNG 8/16 bit, JPEG, TIFF, BMP) and the dispatcher
`decode_file` that every consumer uses (training, evaluation, prediction, inspect).

Output contract (same as DICOM): float32 H×W×C (C = 1 or 3) in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfx.data import intensity
from nfx.data.dicom import decode_dicom, is_dicom
from nfx.errors import BadFileError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def decode_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im).astype(np.float64)
                hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
                return intensity.as_hwc(intensity.to_unit_range(arr, 0.0, hi))
            if mode == "F":
                arr = np.asarray(im, dtype=np.float64)
                return intensity.as_hwc(intensity.to_unit_range(arr, float(arr.min()), float(arr.max())))
            if mode in ("L", "1"):
                arr = np.asarray(im.convert("L"))
                return intensity.as_hwc(intensity.to_unit_range(arr, 0, 255))
            arr = np.asarray(im.convert("RGB"))
            return intensity.to_unit_range(arr, 0, 255)
    except UnidentifiedImageError as e:
        raise BadFileError(path, "not a readable image (unknown or corrupt format); remove or re-export it") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise BadFileError(path, f"image is truncated or corrupt ({str(e)[:120]}); remove or re-export it") from e


def decode_file(path: Path, frame: int | None = None) -> np.ndarray:
    """Any supported file → float32 H×W×C in [0, 1]."""
    path = Path(path)
    if is_dicom(path):
        return decode_dicom(path, frame=frame)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return decode_image(path)
    raise BadFileError(path, f"unsupported file type {path.suffix or '(no extension)'}; use DICOM, PNG, JPEG, TIFF or BMP")
