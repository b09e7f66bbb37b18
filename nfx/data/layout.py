"""The vocabulary of a data folder and a labels CSV, shared by discovery (nfx.data.discover) and
the CSV reader (nfx.data.labels_csv): split names, CSV column names, which files are images."""

from __future__ import annotations

from pathlib import Path

from nfx.data.dicom import is_dicom
from nfx.data.images import IMAGE_SUFFIXES

SPLIT_DIRS = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}
SPLIT_VALUES = {**SPLIT_DIRS, "training": "train", "testing": "test", "holdout": "test"}
IGNORED = {".DS_Store", "Thumbs.db", "desktop.ini"}
CSV_COLUMNS = {
    "path": ("path", "file", "filename", "file_name", "filepath", "image", "image_path"),
    "label": ("label", "class", "target", "diagnosis"),
    "patient": ("patient", "patient_id", "patientid", "subject", "subject_id"),
    "split": ("split", "set", "subset", "partition"),
}
SUPPORTED = "DICOM (.dcm/.dicom or DICM marker), PNG, JPEG, TIFF or BMP"
# one discovered file before its patient id is resolved: (path, label, CSV patient, user split)
Item = tuple[Path, str, "str | None", "str | None"]


def is_supported(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES or is_dicom(p)


def unsupported_reason(p: Path) -> str:
    kind = f"{p.suffix}" if p.suffix else "no extension and no DICM marker"
    return f"unsupported file type ({kind}); use {SUPPORTED}, or move it out of the data folder"
