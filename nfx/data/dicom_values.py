"""Decoded DICOM stored values → float32 H×W×C in [0, 1] (the value steps of nfx.data.dicom).

    palette → modality LUT → VOI (VOI LUT Sequence, else Window Center/Width, else the
    `voi` fallback rule) → scale to [0, 1] by the real output range → MONOCHROME1 inversion

Fallback for grayscale images without any VOI (`--voi-fallback`, recorded in model.json):
- stored: the full range representable by BitsStored, after the modality LUT. Deterministic and
  the same for a whole series, but files whose values use a small part of that range (CT stored
  as signed 16-bit, dose grids in 32 bits) come out nearly flat or black.
- minmax (default for new runs, measured in docs/VOI_FALLBACK.md): the image's own min..max;
  keeps every grey level the file has.
- percentile: the image's 0.5th..99.5th percentile, clipped outside — min..max robust to a few
  extreme pixels (metal, padding values).
A VOI LUT is scaled by its actual min..max entry, not by the bit depth its descriptor declares:
the descriptor's third value may only be 8 or 16 in many writers, so a 12-bit table declared
as 16 bits would use 1/16 of the range; where a table spans its declared depth the two agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nfx.data import intensity
from nfx.errors import BadFileError


def to_unit(arr: np.ndarray, ds: Any, path: Path | str = "<dataset>", voi: str = "stored") -> np.ndarray:
    """Decoded stored values → float32 H×W×C in [0, 1], following the module docstring."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored", 8) or 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, _palette_source(ds))[..., :3]  # RGBA palettes: drop alpha
        # Entries are 8 or 16 bits (descriptor); pydicom returns uint8 when the data holds
        # one byte per entry whatever the descriptor says.
        lut_bits = min(int(ds.RedPaletteColorLookupTableDescriptor[2]), rgb.dtype.itemsize * 8)
        return intensity.as_hwc(intensity.to_unit_range(rgb, 0, 2**lut_bits - 1))

    if photometric.startswith("MONOCHROME"):
        if arr.ndim != 2:
            raise BadFileError(path, f"unexpected {photometric} array shape {arr.shape}; re-export as a single 2-D image")
        lo, hi = intensity.stored_value_range(bits, signed)
        values = apply_modality_lut(arr, ds)
        lo_m, hi_m = _modality_range(ds, lo, hi)
        kind = _voi_kind(ds)
        if kind == "lut":
            out = apply_voi_lut(values, ds, index=0, prefer_lut=True)
            lut_lo, lut_hi = _voi_lut_range(ds)
            unit = intensity.to_unit_range(out, lut_lo, lut_hi)
        elif kind == "window":
            out = apply_voi_lut(values, ds, index=0, prefer_lut=False)
            # pydicom windows onto [y_min, y_max]: below the window → y_min, above → y_max
            y_min, y_max = _window_output_range(ds, lo, hi)
            if y_max >= y_min:
                unit = intensity.to_unit_range(out, y_min, y_max)
            else:  # negative Rescale Slope: pydicom's y_min is the larger value
                unit = intensity.invert(intensity.to_unit_range(out, y_max, y_min))
        else:  # no VOI in the file: the documented fallback rule
            unit = intensity.fallback_to_unit(values, lo_m, hi_m, voi)
        if photometric == "MONOCHROME1":
            unit = intensity.invert(unit)
        return intensity.as_hwc(unit)

    # Colour (RGB; YBR already converted to RGB by pydicom)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise BadFileError(path, f"unexpected colour array shape {arr.shape} ({photometric}); re-export as RGB")
    lo, hi = intensity.stored_value_range(bits, signed)
    return intensity.to_unit_range(arr, lo, hi)


def _voi_kind(ds: Any) -> str | None:
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _voi_lut_range(ds: Any) -> tuple[float, float]:
    """Smallest and largest entry of the first VOI LUT, decoded by pydicom (US or OW data)."""
    from pydicom.pixels import apply_voi

    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    n, first = int(descriptor[0]) or 2**16, int(descriptor[1])
    entries = apply_voi(np.arange(first, first + n, dtype=np.int64), ds, index=0)
    return float(entries.min()), float(entries.max())


def _window_output_range(ds: Any, lo: float, hi: float) -> tuple[float, float]:
    """(y_min, y_max) that pydicom's apply_windowing maps below / above the window to."""
    if ds.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    else:
        y_min, y_max = float(lo), float(hi)
    slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
    if slope is not None and intercept is not None:
        y_min = y_min * float(slope) + float(intercept)
        y_max = y_max * float(slope) + float(intercept)
    return y_min, y_max


def _palette_source(ds: Any) -> Any:
    """The data set to give apply_color_lut. pydicom 3.0 reads non-segmented 16-bit palette
    LUT data in the machine's (little-endian) byte order whatever the file's, so for big-endian
    files a copy of the palette elements with byte-swapped data is returned."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        little = meta.TransferSyntaxUID.is_little_endian
    else:
        little = ds.original_encoding[1]
    if little is not False or "RedPaletteColorLookupTableData" not in ds:
        return ds
    n = int(ds.RedPaletteColorLookupTableDescriptor[0]) or 2**16
    out = Dataset()
    for colour in ("Red", "Green", "Blue", "Alpha"):
        desc = f"{colour}PaletteColorLookupTableDescriptor"
        data = f"{colour}PaletteColorLookupTableData"
        if desc in ds:
            out[desc] = ds[desc]
        if data in ds:
            raw = ds[data].value
            if isinstance(raw, bytes) and len(raw) == 2 * n:
                raw = np.frombuffer(raw, dtype=">u2").astype("<u2").tobytes()
            out[data] = DataElement(ds[data].tag, "OW", raw)
    return out


def _modality_range(ds: Any, lo: float, hi: float) -> tuple[float, float]:
    """The output range of the modality transform: min and max of what apply_modality_lut
    can return (LUT: 0 … 2^bits − 1; rescale: the stored range rescaled)."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    slope = ds.get("RescaleSlope", None)
    intercept = ds.get("RescaleIntercept", None)
    if slope is not None and intercept is not None:
        a, b = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
        return min(a, b), max(a, b)
    return float(lo), float(hi)

