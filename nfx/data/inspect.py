"""`nfx inspect`: what a data folder holds, before any training.

Discovery (headers only) finds the files, then every file is decoded once (in parallel, the
same pipeline training uses, nothing cached) and described: classes × images × patients,
modalities, photometric interpretations, bit depths, image sizes (min/median/max), bad files
with reasons, exact duplicates (byte-identical files; also across classes and splits), copies
(nfx.data.copies: the same picture at another size, encoding, window, rotation or mirror — the
groups finetune keeps in one split) and a class imbalance warning. Decoding runs through
`decode_file`, with the checks finetune makes (a NaN-decoding file is bad in both). Every file
found ends either counted in `n_images` or listed in `bad_files`: n_images + len(bad_files) ==
n_files.

The report is a plain dict with stable keys (the `--json` output):
  n_files, n_images, classes {label: {images, patients}}, n_patients, patient_id_source,
  splits (user-given splits or null), formats, modalities, photometric_interpretations,
  bit_depths, image_sizes {height, width: {min, median, max}}, channels, bad_files [{path,
  reason}], duplicates [[paths]], duplicates_across_classes [[paths]],
  duplicates_across_splits [[paths]], copies {groups, images_in_groups, within_class,
  across_classes, across_splits, examples [[paths]], examples_across_classes [[paths]],
  examples_across_splits [[paths]]}, patient_leaks [ids], warnings [text].
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nfx.data.parallel import map_files

IMBALANCE_RATIO = 3.0  # warn when the largest class has this many times the smallest's images


def inspect_data(
    root: str | Path,
    patient_regex: str | None = None,
    labels: str | Path | None = None,
    frame: int | None = None,
    workers: int | None = None,
    on_scan: Callable[[int], None] | None = None,
    on_decode: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    from nfx.data.cache import default_workers
    from nfx.data.discover import discover
    from nfx.data.split import check_no_leaks, group_keys

    disc = discover(root, patient_regex, labels, min_classes=0, workers=workers, on_progress=on_scan)
    n = max(1, workers or default_workers())
    probes: list[dict[str, Any] | None] = [None] * len(disc.samples)
    args = [(i, s.path, frame) for i, s in enumerate(disc.samples)]
    results, _ = map_files(_probe, args, workers=n, on_done=(lambda: on_decode(1)) if on_decode else None)
    for i, res in results:
        probes[i] = res

    bad = list(disc.bad)
    ok: list[tuple[Any, dict[str, Any]]] = []
    for s, pr in zip(disc.samples, probes, strict=True):
        assert pr is not None
        if "reason" in pr:
            bad.append((s.path, pr["reason"]))
        else:
            ok.append((s, pr))
    bad.sort()

    per_class: dict[str, dict[str, Any]] = {}
    for label in sorted({s.label for s, _ in ok}):
        members = [s for s, _ in ok if s.label == label]
        per_class[label] = {"images": len(members), "patients": len({s.patient for s in members if s.patient})}

    def counts(key: str) -> dict[str, int]:
        return dict(sorted(Counter(str(p[key]) for _, p in ok if p.get(key) is not None).items()))

    heights = [p["height"] for _, p in ok]
    widths = [p["width"] for _, p in ok]

    by_hash: dict[str, list[Any]] = defaultdict(list)
    for s, p in ok:
        by_hash[p["sha256"]].append(s)
    dup_groups = sorted(sorted(s.path for s in g) for g in by_hash.values() if len(g) > 1)
    dup_classes = sorted(sorted(s.path for s in g) for g in by_hash.values()
                         if len(g) > 1 and len({s.label for s in g}) > 1)
    dup_splits = sorted(sorted(s.path for s in g) for g in by_hash.values()
                        if len(g) > 1 and len({s.split for s in g}) > 1)

    copies = _copies([s for s, _ in ok], [p["sig"] for _, p in ok])
    for _, p in ok:
        del p["sig"]
    used = [s for s, _ in ok]
    leaks: list[str] = []
    if disc.user_splits and used:
        groups = group_keys([s.path for s in used], [s.patient for s in used])
        leaks = check_no_leaks(groups, [s.split or "train" for s in used], allow=True)
    splits = None
    if disc.user_splits:
        splits = {}
        for sp in sorted({s.split or "(none)" for s in used}):
            members = [s for s in used if (s.split or "(none)") == sp]
            splits[sp] = {"images": len(members), "patients": len({s.patient for s in members if s.patient})}

    warnings: list[str] = []
    sizes = [c["images"] for c in per_class.values()]
    if len(sizes) >= 2 and min(sizes) > 0 and max(sizes) / min(sizes) >= IMBALANCE_RATIO:
        big = max(per_class, key=lambda k: per_class[k]["images"])
        small = min(per_class, key=lambda k: per_class[k]["images"])
        warnings.append(
            f"class imbalance: {big!r} has {max(sizes)} images, {small!r} {min(sizes)} "
            f"({max(sizes) / min(sizes):.1f}×); consider --balance loss or --balance sampler"
        )
    if len(per_class) < 2:
        warnings.append(f"{len(per_class)} usable class(es); training needs at least two label sub-folders")
    n_pid = sum(1 for s in used if s.patient)
    if used and n_pid == 0:
        warnings.append("no patient id (no DICOM PatientID, CSV patient column or --patient-regex): "
                        "splits will be per image, optimistic if patients have several images")
    elif n_pid < len(used):
        warnings.append(f"{len(used) - n_pid} of {len(used)} images have no patient id")
    if dup_classes:
        warnings.append(f"{len(dup_classes)} set(s) of identical files carry different labels; fix the labels")
    if dup_splits:
        warnings.append(f"{len(dup_splits)} set(s) of identical files are in different splits (a leak)")
    if copies["across_classes"]:
        warnings.append(f"{copies['across_classes']} group(s) of copies of one image carry different labels (e.g. "
                        f"{' ≈ '.join(copies['examples_across_classes'][0][:2])}); finetune refuses this unless "
                        "--allow-duplicate-leak")
    if copies["across_splits"]:
        warnings.append(f"{copies['across_splits']} group(s) of copies of one image sit in different splits (e.g. "
                        f"{' ≈ '.join(copies['examples_across_splits'][0][:2])}); finetune refuses this unless "
                        "--allow-duplicate-leak")
    warnings += disc.notes
    if leaks:
        warnings.append(f"{len(leaks)} patient(s) appear in more than one of your splits; "
                        "finetune refuses this unless --allow-patient-leak")
    multi = [p for p, r in bad if r.startswith("multi-frame")]
    if multi:
        warnings.append(f"{len(multi)} multi-frame DICOM file(s) skipped; choose a frame with --frame N")
    if bad:
        warnings.append(f"{len(bad)} file(s) cannot be used (see bad_files); finetune stops on them "
                        "unless --skip-bad")

    return {
        "root": str(root),
        "labels_csv": str(labels) if labels else None,
        "frame": frame,
        "n_files": disc.n_files,
        "n_images": len(ok),
        "classes": per_class,
        "n_patients": len({s.patient for s in used if s.patient}),
        "patient_id_source": dict(sorted(Counter(s.patient_source or "none" for s in used).items())),
        "splits": splits,
        "formats": counts("format"),
        "modalities": counts("modality"),
        "photometric_interpretations": counts("photometric"),
        "bit_depths": counts("bits"),
        "channels": counts("channels"),
        "image_sizes": {"height": _stats(heights), "width": _stats(widths)},
        "bad_files": [{"path": p, "reason": r} for p, r in bad],
        "duplicates": dup_groups,
        "duplicates_across_classes": dup_classes,
        "duplicates_across_splits": dup_splits,
        "copies": copies,
        "patient_leaks": leaks,
        "warnings": warnings,
    }


def _copies(samples: list[Any], sigs: list[Any]) -> dict[str, Any]:
    """Copy groups (nfx.data.copies) of the usable files: how many, and which lie within one
    class, across classes and across user splits, with up to 5 example groups of each."""
    import numpy as np

    from nfx.data.copies import group_copies
    from nfx.data.split import copy_label_conflicts, copy_sets, copy_straddles

    copy_of = group_copies(np.stack(sigs)).group.tolist() if samples else []
    sets = copy_sets(copy_of)
    across_c = copy_label_conflicts([s.label for s in samples], copy_of)
    across_s = copy_straddles([s.split for s in samples], copy_of)

    def paths(groups: list[list[int]]) -> list[list[str]]:
        return [[samples[i].path for i in m[:6]] for m in groups[:5]]

    return {"groups": len(sets), "images_in_groups": sum(len(m) for m in sets),
            "within_class": len(sets) - len(across_c), "across_classes": len(across_c),
            "across_splits": len(across_s), "examples": paths(sets),
            "examples_across_classes": paths(across_c), "examples_across_splits": paths(across_s)}


def _stats(v: list[int]) -> dict[str, float | None]:
    if not v:
        return {"min": None, "median": None, "max": None}
    s = sorted(v)
    mid = len(s) // 2
    med = s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
    return {"min": s[0], "median": med, "max": s[-1]}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_PIL_BITS = {"1": 1, "L": 8, "P": 8, "RGB": 8, "RGBA": 8, "LA": 8, "CMYK": 8, "YCbCr": 8,
             "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


def _probe(args: tuple[int, str, int | None]) -> tuple[int, dict[str, Any]]:
    """Describe and decode one file; any failure becomes {"reason": …} (runs in workers too)."""
    i, path, frame = args
    from nfx.data.copies import signature
    from nfx.data.dicom import is_dicom, read_header
    from nfx.data.images import decode_file
    from nfx.errors import BadFileError, short_reason

    p = Path(path)
    info: dict[str, Any] = {}
    try:
        info["sha256"] = _sha256(path)
        if is_dicom(p):
            ds = read_header(p)
            info["format"] = "DICOM"
            info["modality"] = str(ds.get("Modality", "") or "") or "(none)"
            info["photometric"] = str(ds.get("PhotometricInterpretation", "") or "") or "(none)"
            bits = ds.get("BitsStored", None)
            info["bits"] = int(bits) if bits not in (None, "") else None
            img = decode_file(p, frame=frame, voi="minmax", notes=[])  # the checks and rules of ingestion
        else:
            from PIL import Image

            info["format"] = _FORMATS.get(p.suffix.lower(), p.suffix.lower() or "(none)")
            try:
                with Image.open(p) as im:
                    info["bits"] = _PIL_BITS.get(im.mode)
            except Exception:
                pass  # decode_image gives the reason
            img = decode_file(p)
        info["sig"] = signature(img)
        info["height"], info["width"] = int(img.shape[0]), int(img.shape[1])
        info["channels"] = int(img.shape[2]) if img.ndim == 3 else 1
        return i, info
    except BadFileError as e:
        return i, {"reason": e.reason}
    except OSError as e:
        return i, {"reason": f"cannot be read ({e.strerror or e}); check the file and its permissions"}
    except Exception as e:  # never crash on a file: explain it
        return i, {"reason": f"could not be decoded ({short_reason(e, 120, with_type=True)}); remove or re-export it"}
