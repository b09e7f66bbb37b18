"""The patient-level split of a finetune run: train / valid / test per sample, and splits.csv."""

from __future__ import annotations

from pathlib import Path

from nfx import runs
from nfx.config import RunConfig
from nfx.console import Printer
from nfx.data.split import split_counts
from nfx.errors import DataError


def _pair(samples, members: list[int]) -> str:
    a, b = members[0], members[1]
    return f"{samples[a].path} ({samples[a].label}) ≈ {samples[b].path} ({samples[b].label})"


GIANT_GROUP_MIN, GIANT_GROUP_SHARE = 20, 0.05  # a copy group this large is warned about


def check_copies(cfg: RunConfig, samples, sigs, printer: Printer) -> tuple[list[int], dict]:
    """Copy groups (nfx.data.copies) of the samples: per sample the first index of its group,
    and the summary recorded in split_summary.json. Copies under different labels are a
    DataError unless --allow-duplicate-leak (then warned and recorded)."""
    from nfx.data.copies import THRESHOLD, group_copies
    from nfx.data.split import copy_label_conflicts, copy_sets

    if sigs is None:
        return list(range(len(samples))), {"checked": False}
    groups = group_copies(sigs)
    copy_of = groups.group.tolist()
    sets = copy_sets(copy_of)
    conflicts = copy_label_conflicts([s.label for s in samples], copy_of)
    summary = {"checked": True, "threshold": THRESHOLD, "groups": len(sets),
               "images_in_groups": sum(len(m) for m in sets), "no_contrast": int(groups.flat.sum()),
               "label_conflicts": len(conflicts),
               "examples": [[samples[i].path for i in m[:4]] for m in sets[:5]]}
    if conflicts:
        n_img = sum(len(m) for m in conflicts)
        msg = (f"{len(conflicts)} group(s) of copies of one image carry different labels ({n_img} images; "
               f"e.g. {_pair(samples, conflicts[0])})")
        if not cfg.data.allow_duplicate_leak:
            raise DataError(f"{msg}; correct the labels or remove the copies, or pass --allow-duplicate-leak (also when "
                            "they are distinct images of one fixed layout that look alike at low resolution: "
                            "docs/COPIES.md)")
        printer.warn(f"{msg}; allowed by --allow-duplicate-leak, recorded in split_summary.json")
    if sets:
        printer.info(f"copies: {summary['images_in_groups']} images are copies of another (other size, encoding, "
                     f"window, rotation or mirror) in {len(sets)} group(s); each group stays in one split")
        largest = max(len(m) for m in sets)
        summary["largest_group"] = largest
        if largest >= max(GIANT_GROUP_MIN, GIANT_GROUP_SHARE * len(samples)):
            # copies of copies are joined transitively: on very alike images (e.g. thousands of
            # near-identical low-passed thumbnails) a chain can join distinct images into one group
            printer.warn(f"one copy group holds {largest} of {len(samples)} images (e.g. "
                         f"{_pair(samples, max(sets, key=len))}): chains of near-copies joined them; they stay in one "
                         "split, so the split may be unbalanced — check them with `nfx inspect`")
    return copy_of, summary


def split(cfg: RunConfig, samples, printer: Printer, run_dir: Path | None = None, sigs=None) -> list[str]:
    """train / valid / test per sample: user splits kept (leak-checked for patients and copies),
    the rest grouped by patient and copy group and stratified by label. `sigs`: the samples'
    copy signatures (nfx.data.cache.signatures); None skips the copy check. Writes
    split_summary.json (patients per split, leaks, copies)."""
    from nfx.data.split import (
        assign_splits,
        copy_straddles,
        group_keys,
        merge_copy_groups,
        split_summary,
    )

    patients = [s.patient for s in samples]
    groups = group_keys([s.path for s in samples], patients)
    copy_of, copies = check_copies(cfg, samples, sigs, printer)
    n_with = sum(1 for p in patients if p)
    if n_with == 0:
        printer.warn(
            "no patient id found (no CSV patient column, no DICOM PatientID, no --patient-regex); splitting "
            "per image. If patients have several images, validation metrics will be optimistic"
        )
    elif n_with < len(samples):
        printer.warn(f"{len(samples) - n_with} of {len(samples)} images have no patient id; "
                     "each of those is its own group in the split")
    user = [s.split for s in samples]
    splits, leaks = assign_splits([s.label for s in samples], groups, user, cfg.data.valid_pct,
                                  cfg.train.seed, allow_leak=cfg.data.allow_patient_leak,
                                  split_groups=merge_copy_groups(groups, copy_of), paths=[s.path for s in samples])
    straddle = copy_straddles(splits, copy_of)
    copies["across_splits"] = len(straddle)
    if straddle:
        msg = (f"{len(straddle)} group(s) of copies of one image sit in different splits (e.g. "
               f"{_pair(samples, straddle[0])})")
        if not cfg.data.allow_duplicate_leak:
            raise DataError(f"{msg}; move each image's copies into one split (or delete them), or pass "
                            "--allow-duplicate-leak")
        printer.warn(f"{msg}; allowed by --allow-duplicate-leak, recorded in split_summary.json: metrics will be "
                     "optimistic")
    if leaks:
        shown = ", ".join(leaks[:5]) + (" …" if len(leaks) > 5 else "")
        printer.warn(f"{len(leaks)} patient(s) appear in more than one split ({shown}); allowed by "
                     "--allow-patient-leak, recorded in split_summary.json: metrics will be optimistic")
    if run_dir is not None:
        from collections import Counter

        summary = {
            "source": "user" if any(user) else "grouped_stratified",
            "seed": cfg.train.seed,
            "valid_pct": cfg.data.valid_pct,
            "patient_id_source": dict(Counter(getattr(s, "patient_source", None) or "none" for s in samples)),
            "splits": split_summary([s.label for s in samples], patients, splits),
            "patient_leaks": leaks,
            "allow_patient_leak": cfg.data.allow_patient_leak,
            "copies": copies,
            "allow_duplicate_leak": cfg.data.allow_duplicate_leak,
        }
        runs.atomic_write_json(run_dir / runs.SPLIT_SUMMARY, summary)
    return splits


def write_splits(samples, split_of: list[str], run_dir: Path, printer: Printer,
                 sigs=None) -> dict[str, dict[str, int]]:
    """splits.csv (which file went where), the copy signature of each row (evaluate finds copies
    of training images in new data with them) and the per-split counts, printed."""
    if sigs is not None:
        import numpy as np

        with runs.atomic_path(run_dir / runs.COPY_SIGNATURES) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(sigs, dtype=np.float16))
    runs.atomic_write_csv(
        run_dir / runs.SPLITS,
        [{"path": s.path, "label": s.label, "patient": s.patient or "", "split": split_of[i]}
         for i, s in enumerate(samples)],
    )
    counts = split_counts([s.patient for s in samples], split_of)
    for sp, c in counts.items():
        printer.info(f"  {sp}: {c['images']} images, {c['patients']} patients")
    return counts
