"""DICOM decoding with pydicom.pixels as a fixed sequence of named steps.

    read → check pixel data / frames → decode (YBR → RGB by pydicom) → palette → modality LUT
    → VOI (VOI LUT Sequence, else Window Center/Width, else the full stored range)
    → scale to [0, 1] by the real output range → MONOCHROME1 inversion

Output: float32 H×W×C in [0, 1] (C = 1 for MONOCHROME*, 3 for colour). Files without pixel
data, DICOMDIRs and multi-frame files without an explicit frame choice raise BadFileError with
the reason; a missing decoder plugin names the package to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nfx.data import intensity
from nfx.errors import BadFileError

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Transfer syntax UID → pip package(s) that decode it (pydicom decodes the rest natively).
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",  # JPEG extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE (pydicom's own decoder also works)
}


def is_dicom(path: Path) -> bool:
    """True for .dcm/.dicom files and for extension-less files with the DICM marker."""
    suffix = path.suffix.lower()
    if suffix in (".dcm", ".dicom"):
        return True
    if suffix == "" or path.name.upper() == "DICOMDIR":
        try:
            with open(path, "rb") as f:
                head = f.read(132)
            return len(head) == 132 and head[128:132] == b"DICM"
        except OSError:
            return False
    return False


def read_header(path: Path) -> Any:
    """Read the header only (no pixel data). Raises BadFileError when not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as e:
        raise BadFileError(path, f"not a valid DICOM file ({_short(e)}); remove it or re-export it") from e
    except Exception as e:  # pydicom raises many types on corrupt files
        raise BadFileError(path, f"DICOM header unreadable ({_short(e)}); remove or re-export it") from e


def patient_id(ds: Any) -> str | None:
    pid = str(ds.get("PatientID", "") or "").strip()
    return pid or None


def check_usable(ds: Any, path: Path, frame: int | None = None) -> int:
    """Reasons a DICOM cannot become one 2-D image; returns the number of frames."""
    sop = str(ds.get("SOPClassUID", ""))
    if "DirectoryRecordSequence" in ds or sop == "1.2.840.10008.1.3.10":
        raise BadFileError(path, "DICOMDIR (an index of other files, no image); skipped")
    if not any(t in ds for t in PIXEL_TAGS):
        what = getattr(getattr(ds, "SOPClassUID", None), "name", "") or str(ds.get("Modality", "")) or "object"
        raise BadFileError(path, f"no pixel data ({what}); not an image, skipped")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1 and frame is None:
        raise BadFileError(
            path, f"multi-frame ({n_frames} frames); choose one with --frame N or remove it"
        )
    if frame is not None and not (-n_frames <= frame < n_frames):
        raise BadFileError(path, f"--frame {frame} out of range: the file has {n_frames} frame(s)")
    return n_frames


def decode_dicom(path: Path, frame: int | None = None) -> np.ndarray:
    """Decode one DICOM file to float32 H×W×C in [0, 1]."""
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:
        raise BadFileError(path, f"not a readable DICOM file ({_short(e)}); remove or re-export it") from e
    n_frames = check_usable(ds, path, frame)
    raw = _decode_pixels(ds, path, frame if n_frames > 1 else None)
    return to_unit(raw, ds, path)


def _decode_pixels(ds: Any, path: Path, frame: int | None) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        if frame is None:
            arr = ds.pixel_array
        else:
            arr = pixel_array(ds, index=frame % int(ds.NumberOfFrames))
    except Exception as e:
        ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
        msg = _short(e)
        pkg = DECODER_PACKAGES.get(ts)
        if pkg and ("plugin" in msg.lower() or "missing" in msg.lower() or "no pixel data decoders" in msg.lower()):
            name = getattr(getattr(ds.file_meta, "TransferSyntaxUID", None), "name", ts)
            raise BadFileError(path, f"no decoder for {name}; pip install {pkg}") from e
        raise BadFileError(path, f"pixel data could not be decoded ({msg}); re-export the file") from e
    return np.asarray(arr)


def to_unit(arr: np.ndarray, ds: Any, path: Path | str = "<dataset>") -> np.ndarray:
    """Decoded stored values → float32 H×W×C in [0, 1], following the module docstring."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored", 8) or 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return intensity.as_hwc(intensity.to_unit_range(rgb, 0, 2**lut_bits - 1))

    if photometric.startswith("MONOCHROME"):
        if arr.ndim != 2:
            raise BadFileError(path, f"unexpected {photometric} array shape {arr.shape}; re-export as a single 2-D image")
        lo, hi = intensity.stored_value_range(bits, signed)
        values = apply_modality_lut(arr, ds)
        lo_m, hi_m = _modality_range(ds, lo, hi)
        voi = _voi_kind(ds)
        if voi == "lut":
            out = apply_voi_lut(values, ds, index=0, prefer_lut=True)
            lut = np.asarray(ds.VOILUTSequence[0].LUTData)
            unit = intensity.to_unit_range(out, float(lut.min()), float(lut.max()))
        elif voi == "window":
            out = apply_voi_lut(values, ds, index=0, prefer_lut=False)
            unit = intensity.to_unit_range(out, lo_m, hi_m)  # pydicom windows onto this range
        else:
            # Documented fallback: the full range representable by BitsStored, after the
            # modality LUT. Deterministic (no per-image statistics), the same for a whole series.
            unit = intensity.to_unit_range(values, lo_m, hi_m)
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


def _modality_range(ds: Any, lo: float, hi: float) -> tuple[float, float]:
    """The output range of the modality transform (the same rule pydicom's windowing uses)."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    slope = ds.get("RescaleSlope", None)
    intercept = ds.get("RescaleIntercept", None)
    if slope is not None and intercept is not None:
        a, b = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
        return min(a, b), max(a, b)
    return float(lo), float(hi)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]
