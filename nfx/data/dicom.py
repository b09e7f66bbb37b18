"""DICOM decoding with pydicom.pixels as a fixed sequence of named steps.

    read → check pixel data / frames → decode (YBR → RGB by pydicom) → palette → modality LUT
    → VOI (VOI LUT Sequence, else Window Center/Width, else the full stored range)
    → scale to [0, 1] by the real output range → MONOCHROME1 inversion

Output: float32 H×W×C in [0, 1] (C = 1 for MONOCHROME*, 3 for colour). Files without pixel
data, DICOMDIRs and multi-frame files without an explicit frame choice raise BadFileError with
the reason; a missing decoder plugin names the package to install. Every failure, including
truncated or corrupt files, is a BadFileError: no other exception leaves decode_dicom.

Files without the 128-byte preamble and "DICM" marker (bare data sets, common in old archives)
are read as well when they look like DICOM (image attributes or a SOP Class UID); a missing
Transfer Syntax UID is taken from the encoding pydicom detected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nfx.data.dicom_values import to_unit
from nfx.errors import BadFileError, short_reason

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# a DICOM media index (PS3.10): expected beside exported studies, listed but never an error
DICOMDIR_REASON = "DICOMDIR (an index of other files, no image); skipped"

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
    return _read(Path(path), header_only=True)


def _read(path: Path, header_only: bool) -> Any:
    """dcmread, with bare data sets (no preamble / "DICM" / file meta) accepted when they
    look like DICOM. Every failure is a BadFileError."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError:
        # No "DICM" marker: maybe a bare data set (pre-Part-10 file); read it as one, but only
        # keep it when it looks like DICOM (image attributes or a SOP Class UID).
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
            looks_dicom = ("Rows" in ds and "Columns" in ds) or "SOPClassUID" in ds
        except Exception:
            looks_dicom = False
        if not looks_dicom:
            raise BadFileError(
                path, "not a DICOM file (no 'DICM' file header, no image attributes); remove it"
            ) from None
    except Exception as e:  # pydicom raises many types on corrupt files
        raise BadFileError(path, f"DICOM file unreadable ({short_reason(e)}); remove or re-export it") from e
    try:
        _ensure_transfer_syntax(ds)
    except Exception as e:
        raise BadFileError(path, f"DICOM file unreadable ({short_reason(e)}); remove or re-export it") from e
    return ds


def _ensure_transfer_syntax(ds: Any) -> None:
    """Bare data sets and files whose meta lacks (0002,0010): use the encoding pydicom detected
    (pydicom cannot decode pixel data or OW lookup tables without it)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None or little is None or (implicit and not little):
        return
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def patient_id(ds: Any) -> str | None:
    pid = str(ds.get("PatientID", "") or "").strip()
    return pid or None


def check_usable(ds: Any, path: Path, frame: int | None = None, notes: list[str] | None = None) -> int:
    """Reasons a DICOM cannot become one 2-D image; returns the number of frames. A Number of
    Frames that is not a number is tolerated (set to 1, with a note) when the pixel data holds
    a whole number of frames (uncompressed data: its length says how many): the count is taken
    from the data, with a note, and the multi-frame rule applies as usual. `frame` picks the
    frame of multi-frame files; a single-frame file gives its only frame whatever `frame` is
    (a mixed series stays trainable; decode_dicom notes it)."""
    sop = str(ds.get("SOPClassUID", ""))
    if "DirectoryRecordSequence" in ds or sop == "1.2.840.10008.1.3.10":
        raise BadFileError(path, DICOMDIR_REASON)
    if not any(t in ds for t in PIXEL_TAGS):
        if "Rows" in ds and "Columns" in ds:  # an image header whose pixel data is gone
            raise BadFileError(path, "image header but no pixel data (file truncated?); re-export it")
        what = getattr(getattr(ds, "SOPClassUID", None), "name", "") or str(ds.get("Modality", "")) or "object"
        raise BadFileError(path, f"no pixel data ({what}); not an image, skipped")
    raw_frames = ds.get("NumberOfFrames", 1)
    try:
        n_frames = int(raw_frames or 1)
    except (TypeError, ValueError):
        n_data = _native_frames(ds)
        if notes is None or not n_data:
            reason = f"invalid Number of Frames {str(raw_frames)!r}; re-export the file"
            raise BadFileError(path, reason) from None
        ds.NumberOfFrames = n_frames = n_data
        notes.append(f"Number of Frames {str(raw_frames)!r} is not a number; the pixel data holds "
                     f"{n_data} frame(s), used that")
    if n_frames > 1 and frame is None:
        raise BadFileError(
            path,
            f"multi-frame ({n_frames} frames); choose one with --frame N (0 to {n_frames - 1})"
            " or remove it",
        )
    # A single-frame file in a series of multi-frame ones gives its only frame whatever N is
    # (decode_dicom notes it); a multi-frame file without frame N is refused, never clamped.
    if frame is not None and n_frames > 1 and not (-n_frames <= frame < n_frames):
        raise BadFileError(path, f"--frame {frame} out of range: the file has {n_frames} frames (0 to "
                                 f"{n_frames - 1}); choose a frame every multi-frame file has")
    return n_frames


def decode_dicom(path: Path, frame: int | None = None, voi: str = "stored",
                 notes: list[str] | None = None) -> np.ndarray:
    """Decode one DICOM file to float32 H×W×C in [0, 1]. `voi`: the rule for grayscale images
    without any VOI (nfx.data.dicom_values.to_unit). `notes`: where tolerated defects are
    described (without it they are refused)."""
    path = Path(path)
    ds = _read(path, header_only=False)
    if len(ds) == 0:
        # pydicom returns an empty data set when the file ends inside encapsulated pixel data
        raise BadFileError(
            path, "no DICOM elements could be read (file truncated or corrupt); re-export it"
        )
    try:
        n_frames = check_usable(ds, path, frame, notes)
    except BadFileError:
        raise
    except Exception as e:  # pydicom parses elements lazily: a corrupt one fails when first read
        raise BadFileError(path, f"DICOM header could not be read ({short_reason(e)}); re-export the file") from e
    if frame is not None and n_frames == 1 and notes is not None:
        notes.append(f"a single-frame file: --frame {frame} does not apply, its only frame was used")
    raw = _decode_pixels(ds, path, frame if n_frames > 1 else None, notes)
    try:
        return to_unit(raw, ds, path, voi=voi)
    except BadFileError:
        raise
    except Exception as e:  # invalid LUT / window / palette attributes
        reason = f"pixel values could not be converted ({short_reason(e)}); re-export the file"
        raise BadFileError(path, reason) from e


def _native_frames(ds: Any) -> int | None:
    """Frames in uncompressed pixel data, from its length (None: compressed or unknown)."""
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None)
    data = ds.get("PixelData")
    if ts is None or ts.is_compressed or not isinstance(data, bytes):
        return None
    try:
        bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return None
    per_frame = -(-bits // 8)
    n, rest = divmod(len(data), per_frame) if per_frame else (0, 1)
    return n if n and rest <= 1 else None  # a whole number of frames (+ the even-length pad byte)


SEQUENTIAL_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")


def repair_sequential_jpeg(frame: bytes) -> bytes | None:
    """A baseline/extended (sequential DCT) JPEG must scan the whole spectrum: SOS Ss=0, Se=63,
    Ah=Al=0. Some writers put other values there (pydicom's JPEG-lossy.dcm: Se=0), which strict
    decoders refuse and lenient ones ignore. Returns the frame with the first scan header set to
    0/63/0, or None when it is not such a file or needs no change."""
    b, i, sof = bytearray(frame), 2, None
    if b[:2] != b"\xff\xd8":
        return None
    while i + 4 <= len(b) and b[i] == 0xFF:
        marker, length = b[i + 1], int.from_bytes(b[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            sof = marker
        if marker == 0xDA:
            p = i + 5 + 2 * b[i + 4]
            if sof not in (0xC0, 0xC1) or p + 3 > len(b) or tuple(b[p:p + 3]) == (0, 63, 0):
                return None
            b[p:p + 3] = bytes((0, 63, 0))
            return bytes(b)
        i += 2 + length
    return None


def _repaired(ds: Any) -> bool:
    """Rewrite a single-frame sequential JPEG's scan header in place (see repair_sequential_jpeg)."""
    from pydicom.encaps import encapsulate, generate_frames

    if str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")) not in SEQUENTIAL_JPEG:
        return False
    frames = list(generate_frames(ds.PixelData, number_of_frames=1))
    fixed = repair_sequential_jpeg(frames[0]) if len(frames) == 1 else None
    if fixed is None:
        return False
    ds.PixelData = encapsulate([fixed])
    return True


def _decode_pixels(ds: Any, path: Path, frame: int | None, notes: list[str] | None = None) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        if frame is None:
            arr = ds.pixel_array
        else:
            arr = pixel_array(ds, index=frame % int(ds.NumberOfFrames))
    except Exception as e:
        if notes is not None and frame is None:
            try:
                if _repaired(ds):
                    arr = ds.pixel_array
                    notes.append("its JPEG scan header declared a partial spectrum (a sequential JPEG "
                                 "scans 0..63); repaired in memory and decoded")
                    return np.asarray(arr)
            except Exception:  # the repair did not help: report the original failure
                pass
        ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
        msg = short_reason(e)
        pkg = DECODER_PACKAGES.get(ts)
        # Only when pydicom says no decoder is *available*; "exceptions were raised by all
        # available plugins" means the installed decoders failed on this file (corrupt data).
        text = str(e).lower()
        if pkg and ("missing dependencies" in text or "no pixel data decoders" in text):
            name = getattr(getattr(ds.file_meta, "TransferSyntaxUID", None), "name", ts)
            raise BadFileError(path, f"no decoder for {name}; pip install {pkg}") from e
        raise BadFileError(path, f"pixel data could not be decoded ({msg}); re-export the file") from e
    return np.asarray(arr)


__all__ = ["decode_dicom", "is_dicom", "read_header", "patient_id", "check_usable", "to_unit"]
