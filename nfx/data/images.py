"""Decoding of ordinary image files (PNG 8/16 bit, JPEG, TIFF, BMP) and the dispatcher
`decode_file` that every consumer uses (training, evaluation, prediction, inspect).

Output contract (same as DICOM): float32 H×W×C (C = 1 or 3) in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfx.data import intensity
from nfx.data.dicom import decode_dicom, is_dicom
from nfx.errors import BadFileError, short_reason

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def decode_image(path: Path) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS (~89 M) and refuses above twice that: both are
            # decompression bombs here (a header declaring more pixels than any scan has)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode_pil(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadFileError(path, f"declares more pixels than nfx decodes ({short_reason(e, 80)}); "
                                 "a decompression bomb or a corrupt header: remove or re-export it") from e
    except UnidentifiedImageError as e:
        raise BadFileError(path, "not a readable image (unknown or corrupt format); remove or re-export it") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise BadFileError(path, f"image is truncated or corrupt ({short_reason(e, 120)}); remove or re-export it") from e


def _decode_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        pages = getattr(im, "n_frames", 1)
        # a multi-page TIFF or an animated PNG/WEBP; an MPO (a camera JPEG with extra pictures) is its first
        if pages > 1 and im.format in ("TIFF", "PNG", "WEBP"):
            raise BadFileError(path, f"multi-page image ({pages} pages); nfx reads one 2-D image per file: "
                                     "save the page you want as its own file")
        im.load()
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im).astype(np.float64)
            hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
            return intensity.as_hwc(intensity.to_unit_range(arr, 0.0, hi))
        if mode == "F":
            arr = np.asarray(im, dtype=np.float64)
            if not np.isfinite(arr).all():
                raise BadFileError(path, f"{int((~np.isfinite(arr)).sum())} pixel(s) are NaN or inf; "
                                         "fix or remove the file")
            return intensity.as_hwc(intensity.to_unit_range(arr, float(arr.min()), float(arr.max())))
        if mode in ("L", "1"):
            arr = np.asarray(im.convert("L"))
            return intensity.as_hwc(intensity.to_unit_range(arr, 0, 255))
        if mode in ("RGB", "RGBA") and _deep_colour(im):
            deep = _read_deep_colour(path)
            if deep is not None:
                return deep
        arr = np.asarray(im.convert("RGB"))
        return intensity.to_unit_range(arr, 0, 255)


def _deep_colour(im) -> bool:
    """16-bit-per-channel colour (PNG bit depth 16, TIFF BitsPerSample 16): Pillow would
    silently reduce it to 8 bits."""
    if im.format == "PNG":
        return _png_bit_depth(im) > 8
    if im.format == "TIFF":
        bps = im.tag_v2.get(258) if hasattr(im, "tag_v2") else None
        return bool(bps) and max(bps if isinstance(bps, tuple) else (bps,)) > 8
    return False


def _png_bit_depth(im) -> int:
    try:
        with open(im.filename, "rb") as f:
            head = f.read(26)
        return head[24] if head[12:16] == b"IHDR" else 8  # IHDR: bit depth byte
    except (OSError, IndexError, AttributeError):
        return 8


def _read_deep_colour(path: Path) -> np.ndarray | None:
    """Full-precision read of 16-bit colour through OpenCV (BGR(A) → RGB), scaled by 65535."""
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
        return None
    rgb = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return intensity.to_unit_range(rgb, 0, 65535)


def decode_file(path: Path, frame: int | None = None, voi: str = "stored",
                notes: list[str] | None = None) -> np.ndarray:
    """Any supported file → float32 H×W×C in [0, 1], finite (a file whose pixels decode to NaN
    or inf — NaN pixels in a float TIFF, a DICOM RescaleSlope that overflows — is a bad file)."""
    path = Path(path)
    if is_dicom(path):
        out = decode_dicom(path, frame=frame, voi=voi, notes=notes)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        out = decode_image(path)
    else:
        raise BadFileError(path, f"unsupported file type {path.suffix or '(no extension)'}; use DICOM, PNG, JPEG, TIFF or BMP")
    if not np.isfinite(out).all():
        raise BadFileError(path, "pixel values are not finite (NaN or inf) after decoding and rescaling; "
                                 "fix the file (or its RescaleSlope/Intercept) or remove it")
    return out
