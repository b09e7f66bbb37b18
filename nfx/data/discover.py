"""Discovery: a data folder → samples (path, label, patient, user split), reading headers only.

Layouts:
  DATA/<label>/**/<file>                       class per folder
  DATA/{train,valid,test}/<label>/**/<file>    class per folder, splits given by the user
Patient id: DICOM PatientID (header only), else the first group of --patient-regex matched
against the file name, else none (the split then goes per file, and nfx says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from nfx.data.dicom import is_dicom, patient_id, read_header
from nfx.data.images import IMAGE_SUFFIXES
from nfx.errors import BadFileError, DataError

SPLIT_DIRS = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}
IGNORED = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class Sample:
    path: str
    label: str
    patient: str | None = None
    split: str | None = None  # only when the user supplied splits


@dataclass
class Discovery:
    root: str
    samples: list[Sample]
    classes: list[str]
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    user_splits: bool = False

    @property
    def n_patients(self) -> int:
        return len({s.patient for s in self.samples if s.patient})


def _candidate_files(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name in IGNORED or p.name.startswith("."):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES or is_dicom(p):
            out.append(p)
    return out


def discover(root: str | Path, patient_regex: str | None = None) -> Discovery:
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder not found; pass a folder with one sub-folder per label")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass a folder with one sub-folder per label")
    regex = None
    if patient_regex:
        try:
            regex = re.compile(patient_regex)
        except re.error as e:
            raise DataError(f"--patient-regex {patient_regex!r} is not a valid regular expression ({e})") from e

    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_DIRS]
    user_splits = bool(split_dirs)
    layout: list[tuple[Path, str | None]] = (
        [(d, SPLIT_DIRS[d.name.lower()]) for d in split_dirs] if user_splits else [(root, None)]
    )

    samples: list[Sample] = []
    bad: list[tuple[str, str]] = []
    loose = [p for p in root.iterdir() if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or is_dicom(p))]
    for base, split in layout:
        for label_dir in sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for f in _candidate_files(label_dir):
                try:
                    pid = _patient_of(f, regex)
                except BadFileError as e:
                    bad.append((str(f), e.reason))
                    continue
                samples.append(Sample(str(f), label_dir.name, pid, split))

    if not samples and not bad:
        hint = (
            f"found {len(loose)} image(s) directly in {root}, but labels come from sub-folder names"
            if loose
            else f"no image files (DICOM, PNG, JPEG, TIFF, BMP) found in {root}"
        )
        raise DataError(f"{hint}; put images in one sub-folder per label, e.g. {root}/normal/ and {root}/glaucoma/")
    classes = sorted({s.label for s in samples})
    if len(classes) < 2:
        only = classes[0] if classes else "(none)"
        raise DataError(
            f"{root}: only one class ({only!r}) found; classification needs at least two label "
            f"sub-folders, e.g. {root}/normal/ and {root}/glaucoma/"
        )
    return Discovery(str(root), samples, classes, bad, user_splits)


def _patient_of(path: Path, regex: re.Pattern | None) -> str | None:
    if is_dicom(path):
        pid = patient_id(read_header(path))
        if pid:
            return pid
    if regex is not None:
        m = regex.search(path.name)
        if m:
            return m.group(1) if m.groups() else m.group(0)
    return None
