"""Real medical images for the learning benchmarks, installed from the package registry (PyPI)
into a local cache; nothing here is committed to the repository.

- ``brain_mri()``: 253 brain MRI JPEG/PNG slices, two classes (``yes`` = tumour, 155;
  ``no`` = no tumour, 98), non-square (150–1920 px, median 278×331), grey, RGB and palette.
  Source: the Kaggle dataset "Brain MRI Images for Brain Tumor Detection" (N. Chakrabarty,
  2019), as redistributed in the source distribution of the PyPI package
  ``my-unique-datasets-library`` 0.8.1 (package licence: MIT; the dataset's own page states no
  licence, so treat it as research use only and do not redistribute it). No patient ids: every
  image is its own group in the split.
- ``elpv()``: a second real greyscale set, not medical: electroluminescence images of solar cells
  (300×300 8-bit grey PNGs) from the ELPV dataset (Buerhop-Lutz et al. 2018; Deitsch et al. 2019),
  as shipped in the PyPI package ``elpv-dataset`` 1.0.0.post1 (licence CC BY-NC-SA 4.0: research use,
  do not redistribute). Two classes from its expert defect probabilities: ``functional`` (0) and
  ``defective`` (2/3 or 1); the uncertain 1/3 cells are left out. A fixed, seeded sample of
  ``n_per_class`` images per class keeps CPU runs short. No module ids: every image is its own group
  in the split (nfx's copy grouping still applies).
- ``elpv_pretrain()``: a larger real set for pretraining "local weights" with labels: every ELPV
  cell *not* in ``elpv(n_per_class=120)`` (2384 cells), eight classes = cell type (mono/poly) ×
  expert defect probability (0, 1/3, 2/3, 1). Fine-tuning on the brain MRI set from these weights
  is cross-domain transfer (solar cells to MRI); fine-tuning on ``elpv(120)`` is in-domain transfer
  from disjoint cells whose labels include the defect task itself (supervised pretraining on ten
  times more cells of the same kind) — say which one a number is. Its ``labels.csv`` fixes a
  seeded, stratified 10 % validation split: nfx's copy grouping chains these fixed-layout cells
  into one group of ~500 (docs/COPIES.md), which would otherwise take a third of the set.
- ``pretrain_set()``: a different real set for pretraining the "local weights" yourself: every
  image in pydicom's and pydicom-data's test files that nfx can decode (CT, MR, CR/DX, US, XA,
  NM, RT, secondary capture; pydicom-data is a dev dependency), turned into a self-supervised
  4-way rotation task (0/90/180/270 degrees). It shares no image with ``brain_mri()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path.home() / ".cache" / "nfx-bench"
BRAIN_PKG = "my-unique-datasets-library==0.8.1"
BRAIN_MEMBER = "my_datasets/data/images/brain_tumor_dataset/"


def brain_mri(root: Path = CACHE) -> Path:
    """The brain MRI folder (``yes/``, ``no/``), downloaded from PyPI on first use."""
    dest = root / "brain_mri"
    if (dest / "yes").is_dir() and (dest / "no").is_dir():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", "-q", "-d", tmp, BRAIN_PKG], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if not sdists:  # pip may refuse to prepare metadata without build isolation: fetch plainly
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "-q", "-d", tmp, BRAIN_PKG], check=True)
            sdists = list(Path(tmp).glob("*.tar.gz"))
        staging = Path(tmp) / "x"
        with tarfile.open(sdists[0]) as tf:
            members = [m for m in tf.getmembers() if BRAIN_MEMBER in m.name and m.isfile()]
            tf.extractall(staging, members=members, filter="data")
        src = next(staging.rglob("brain_tumor_dataset"))
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        shutil.copytree(src, part)
        shutil.rmtree(dest, ignore_errors=True)
        part.rename(dest)
    return dest


ELPV_PKG = "elpv-dataset==1.0.0.post1"


@contextlib.contextmanager
def _elpv_wheel():
    """The ELPV wheel from PyPI (in a temporary folder) and its cells: (member path under
    elpv_dataset/data/, expert defect probability, cell type mono/poly)."""
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, ELPV_PKG], check=True)
        wheel = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        rows = [line.split() for line in wheel.read("elpv_dataset/data/labels.csv").decode().split("\n")]
        yield wheel, [(r[0], float(r[1]), r[2]) for r in rows if len(r) >= 3]


def elpv(root: Path = CACHE, n_per_class: int = 200) -> Path:
    """ELPV solar-cell folder (``functional/``, ``defective/``), ``n_per_class`` each, from PyPI on first use."""
    import random

    dest = root / f"elpv_{n_per_class}"
    if (dest / "functional").is_dir() and (dest / "defective").is_dir():
        return dest
    with _elpv_wheel() as (wheel, cells):
        by_class: dict[str, list[str]] = {"functional": [], "defective": []}
        for name, p, _kind in cells:
            if p == 0 or p > 0.5:
                by_class["functional" if p == 0 else "defective"].append(name)
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        rng = random.Random(0)
        for label, names in by_class.items():
            (part / label).mkdir(parents=True)
            for name in sorted(rng.sample(sorted(names), n_per_class)):
                (part / label / Path(name).name).write_bytes(wheel.read(f"elpv_dataset/data/{name}"))
        shutil.rmtree(dest, ignore_errors=True)
        part.rename(dest)
    return dest


def elpv_pretrain(root: Path = CACHE, exclude_n_per_class: int = 120) -> Path:
    """ELPV cells outside ``elpv(exclude_n_per_class)`` in eight folders ``{type}_p{000,033,067,100}``."""
    import random

    dest = root / f"elpv_pretrain_without_{exclude_n_per_class}"
    if (dest / "labels.csv").is_file():
        return dest
    held = {f.name for f in elpv(root, exclude_n_per_class).rglob("*.png")}
    with _elpv_wheel() as (wheel, cells):
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        for name, p, kind in cells:
            if Path(name).name in held:
                continue
            label = f"{kind}_p{round(p * 100):03d}"
            (part / label).mkdir(parents=True, exist_ok=True)
            (part / label / Path(name).name).write_bytes(wheel.read(f"elpv_dataset/data/{name}"))
        rows, rng = ["path,label,split"], random.Random(0)
        for d in sorted(part.iterdir()):
            files = sorted(f.name for f in d.glob("*.png"))
            valid = set(rng.sample(files, max(1, len(files) // 10)))
            rows += [f"{d.name}/{f},{d.name},{'valid' if f in valid else 'train'}" for f in files]
        (part / "labels.csv").write_text("\n".join(rows) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        part.rename(dest)
    return dest


def _dicom_sources() -> list[Path]:
    import pydicom.data

    dirs = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        from pydicom.data.data_manager import external_data_sources

        dirs.append(Path(external_data_sources()["pydicom-data"].data_path))
    except Exception:  # pydicom-data missing or its layout changed: pydicom's own files only
        pass
    found = []
    for d in dirs:
        found += [f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in (".dcm", "")]
    return sorted(set(found))


def pretrain_set(root: Path = CACHE, size: int = 128, min_side: int = 48) -> Path:
    """Rotation-prediction folders (rot000/ rot090/ rot180/ rot270/) from real DICOM test images."""
    import warnings

    import numpy as np
    from PIL import Image

    from nfx.data import intensity
    from nfx.data.images import decode_file
    from nfx.data.resize import resize

    dest = root / f"pretrain_rotation_{size}"
    if dest.is_dir() and any(dest.glob("rot000/*.png")):
        return dest
    part = dest.with_name(dest.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    seen: set[str] = set()
    n = 0
    warnings.filterwarnings("ignore")
    for f in _dicom_sources():
        try:
            img = decode_file(f, frame=0)
        except Exception:
            continue
        if min(img.shape[:2]) < min_side or not np.isfinite(img).all() or img.std() < 1e-3:
            continue
        arr = (resize(intensity.to_channels(img, 3), size, "crop") * 255).round().astype(np.uint8)
        digest = hashlib.sha1(arr.tobytes()).hexdigest()
        if digest in seen:  # the same picture in several encodings: keep one
            continue
        seen.add(digest)
        for k in range(4):
            out = part / f"rot{90 * k:03d}" / f"{f.stem}_{n:03d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(np.rot90(arr, k))).save(out)
        n += 1
    shutil.rmtree(dest, ignore_errors=True)
    part.rename(dest)
    return dest


if __name__ == "__main__":
    print(brain_mri())
    print(elpv())
    p = pretrain_set()
    print(p, len(list(p.glob("rot000/*.png"))), "images × 4 rotations")
