"""Discovery: a data folder (or a labels CSV) → samples (path, label, patient, user split),
reading DICOM headers only (never pixel data).

Layouts:
  DATA/<label>/**/<file>                       class per folder
  DATA/{train,valid,test}/<label>/**/<file>    class per folder, splits given by the user
  --labels FILE.csv                            columns path, label[, patient][, split]; relative
                                               paths are taken from DATA (else the CSV's folder)
Files: DICOM (.dcm, .dicom, extension-less files with the DICM marker), PNG, JPEG, TIFF, BMP.

Patient id, first that exists: the CSV's patient column, the DICOM PatientID (header only), the
first group of --patient-regex matched against the file name; else none (the split then goes per
file, and nfx says so).

Nothing is dropped silently: a file in a label folder that is not a supported image, a DICOM
whose header cannot be read, an image lying outside the layout, a CSV row naming a missing
file — each becomes a `bad` entry (path, reason) for bad_files.csv.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nfx.data.dicom import is_dicom, patient_id, read_header
from nfx.data.labels_csv import from_csv
from nfx.data.layout import IGNORED, SPLIT_DIRS, Item, is_supported, unsupported_reason
from nfx.data.parallel import map_files
from nfx.errors import BadFileError, DataError, short_reason


@dataclass(frozen=True)
class Sample:
    path: str
    label: str
    patient: str | None = None
    split: str | None = None  # only when the user supplied splits
    patient_source: str | None = None  # "csv" | "dicom" | "regex" | None


@dataclass
class Discovery:
    root: str
    samples: list[Sample]
    classes: list[str]
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    user_splits: bool = False
    n_files: int = 0  # every file considered: len(samples) + len(bad)
    notes: list[str] = field(default_factory=list)  # things worth a warning (labels CSV vs folders)

    @property
    def n_patients(self) -> int:
        return len({s.patient for s in self.samples if s.patient})

    @property
    def patient_sources(self) -> dict[str, int]:
        return dict(Counter(s.patient_source or "none" for s in self.samples))


def _walk(folder: Path, root: Path | None = None) -> tuple[list[Path], list[tuple[str, str]]]:
    """(visible files under `folder`, sorted; [(path, problem)]). Symbolic links to folders are
    followed, except a link back into a folder already walked (a loop) and a link that leads back
    into the data `root` (e.g. glaucoma/loop -> ..: the other classes' images would reappear
    under this label): both reported, not followed. A link whose target is missing is reported.
    Hidden files/folders and OS litter are skipped."""
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    root_real = os.path.realpath(root) if root is not None else None
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            problems.append((dirpath, f"symbolic-link loop (leads back to {real}); not followed — remove the link"))
            dirnames[:] = []
            continue
        if (root_real and Path(dirpath) != Path(folder) and os.path.islink(dirpath)
                and (real == root_real or real.startswith(root_real + os.sep))
                and not real.startswith(os.path.realpath(folder) + os.sep)):
            problems.append((dirpath, f"symbolic link back into the data folder (to {real}); not followed, its "
                                      "images would be counted twice or under another label — remove the link"))
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name in IGNORED or name.startswith("."):
                continue
            f = Path(dirpath) / name
            if not f.exists():
                problems.append((str(f), "broken symbolic link (its target is missing); fix or remove the link"))
            elif f.is_file():
                files.append(f)
    return sorted(files), sorted(problems)


def _visible_files(folder: Path) -> list[Path]:
    return _walk(folder)[0]


def candidate_files(folder: Path) -> list[Path]:
    """Supported image files under a folder (stray images beside the split folders)."""
    return [p for p in _visible_files(folder) if is_supported(p)]


def walk_files(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """A folder walked as ingest walks it: (supported image files, [(other visible file, reason)]).
    Hidden files and OS litter (.DS_Store, ._*, Thumbs.db) are neither."""
    ok: list[Path] = []
    found, other = _walk(folder)
    for p in found:
        if is_supported(p):
            ok.append(p)
        else:
            other.append((str(p), unsupported_reason(p)))
    return ok, other



def discover(
    root: str | Path,
    patient_regex: str | None = None,
    labels: str | Path | None = None,
    *,
    min_classes: int = 2,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    pseudonymise: bool = False,
) -> Discovery:
    """Find every sample. `on_progress(n)` is called as DICOM headers are read (parallel).
    `pseudonymise`: patient ids become nfx.data.pseudonym pseudonyms (what the workflows ask for
    unless --keep-patient-ids)."""
    root = Path(root)
    if labels is None:
        if not root.exists():
            raise DataError(f"{root}: data folder not found; pass a folder with one sub-folder per label")
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; pass a folder with one sub-folder per label")
    regex = _compile(patient_regex)

    notes: list[str] = []
    if labels is not None:
        items, bad, user_splits, notes = from_csv(root, Path(labels))
        where = str(labels)
    else:
        items, bad, user_splits = _from_folders(root)
        where = str(root)
        notes += layout_notes(root)

    samples = _resolve_patients(items, regex, bad, workers, on_progress)
    if pseudonymise:
        from dataclasses import replace

        from nfx.data.pseudonym import pseudonym

        samples = [replace(s, patient=pseudonym(s.patient)) if s.patient else s for s in samples]
    n_files = len(samples) + len(bad)
    if not samples and not bad:
        loose = [p for p in root.iterdir() if p.is_file() and is_supported(p)] if root.is_dir() else []
        hint = (
            f"found {len(loose)} image(s) directly in {root}, but labels come from sub-folder names"
            if loose
            else f"no image files (DICOM, PNG, JPEG, TIFF, BMP) found in {where}"
        )
        raise DataError(f"{hint}; put images in one sub-folder per label, e.g. {root}/normal/ and {root}/glaucoma/")
    classes = sorted({s.label for s in samples})
    if min_classes and len(classes) < min_classes:
        if not samples:
            raise DataError(
                f"{where}: none of the {len(bad)} file(s) can be used (first: {bad[0][0]}: {bad[0][1]}); "
                "fix them or run `nfx inspect` for the full list"
            )
        only = classes[0] if classes else "(none)"
        raise DataError(
            f"{where}: only one class ({only!r}) found; classification needs at least two label "
            f"sub-folders, e.g. {root}/normal/ and {root}/glaucoma/"
        )
    return Discovery(str(root), samples, classes, sorted(bad), user_splits, n_files, notes)


def layout_notes(root: Path) -> list[str]:
    """A warning when the class folders themselves hold the same label-like sub-folders
    (DATA/png/{glaucoma,normal} and DATA/dicom/{glaucoma,normal}): the "classes" are then formats
    or sites, and the user probably meant one of those folders."""
    def subfolders(d: Path) -> set[str]:
        return {c.name for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")}

    try:
        tops = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
                and d.name.lower() not in SPLIT_DIRS]
        inner = {d.name: subfolders(d) for d in tops}
    except OSError:
        return []
    shared = set.intersection(*inner.values()) if len(inner) >= 2 else set()
    if len(shared) < 2:
        return []
    names = ", ".join(f"{n}/" for n in sorted(shared))
    first = tops[0].name
    return [f"the class folders {', '.join(d.name + '/' for d in tops)} each contain the same label-like folders "
            f"({names}): they look like formats or sites, not classes; did you mean {root / first}?"]


def _compile(patient_regex: str | None) -> re.Pattern | None:
    if not patient_regex:
        return None
    try:
        return re.compile(patient_regex)
    except re.error as e:
        raise DataError(f"--patient-regex {patient_regex!r} is not a valid regular expression ({e})") from e


# (path, label, split, csv patient)
def _from_folders(root: Path) -> tuple[list[Item], list[tuple[str, str]], bool]:
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_DIRS]
    user_splits = bool(split_dirs)
    items: list[Item] = []
    bad: list[tuple[str, str]] = []
    label_dirs: list[tuple[Path, str | None]] = []
    if user_splits:
        for d in subdirs:
            if d in split_dirs:
                label_dirs += [(ld, SPLIT_DIRS[d.name.lower()]) for ld in sorted(d.iterdir())
                               if ld.is_dir() and not ld.name.startswith(".")]
                bad += [(str(p), f"directly in {d}, not in a label sub-folder; move it into {d}/<label>/")
                        for p in sorted(d.iterdir()) if p.is_file() and is_supported(p)]
            else:
                bad += [(str(p), f"outside the train/valid/test folders of {root}; move it into one of them")
                        for p in candidate_files(d)]
    else:
        label_dirs = [(d, None) for d in subdirs]
    # loose images next to label folders would otherwise vanish without a word
    if subdirs:
        bad += [(str(p), f"directly in {root}, not in a label sub-folder; move it into one")
                for p in sorted(root.iterdir()) if p.is_file() and p.name not in IGNORED and is_supported(p)]
    reached: set[str] = set()  # real paths: a file reached twice (through links) is counted once
    for label_dir, split in label_dirs:
        found, problems = _walk(label_dir, root)
        bad += problems
        found = [f for f in found if not (os.path.realpath(f) in reached or reached.add(os.path.realpath(f)))]
        if not found and not problems:
            bad.append((str(label_dir), "empty class folder (no files); add its images or remove the folder"))
        for f in found:
            if is_supported(f):
                items.append((f, label_dir.name, split, None))
            else:
                bad.append((str(f), unsupported_reason(f)))
    return items, bad, user_splits


def _resolve_patients(items: list[Item], regex: re.Pattern | None, bad: list[tuple[str, str]],
                      workers: int | None, on_progress: Callable[[int], None] | None) -> list[Sample]:
    def one(item: Item) -> Sample | tuple[str, str]:
        f, label, split, pid = item
        source = "csv" if pid else None
        try:
            if not pid and is_dicom(f):
                pid = patient_id(read_header(f))
                source = "dicom" if pid else None
            if not pid and regex is not None:
                m = regex.search(f.name)
                if m:
                    pid = (m.group(1) if m.groups() else m.group(0)) or None
                    source = "regex" if pid else None
        except BadFileError as e:
            return (str(f), e.reason)
        except Exception as e:  # a header parser crash must become a reason
            return (str(f), f"DICOM header unreadable ({short_reason(e, 100, with_type=True)}); remove or re-export it")
        finally:
            if on_progress:
                on_progress(1)
        return Sample(str(f), label, pid, split, source)

    n = workers or min(8, max(1, os.cpu_count() or 1))
    # header reads are mostly file I/O: threads suffice; `one` reports progress itself
    results, _ = map_files(one, items, workers=n, serial_below=64)
    samples = []
    for r in results:
        if isinstance(r, Sample):
            samples.append(r)
        else:
            bad.append(r)
    return samples

