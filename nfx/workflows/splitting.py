"""The patient-level split of a finetune run: train / valid / test per sample, and splits.csv."""

from __future__ import annotations

from pathlib import Path

from nfx import runs
from nfx.config import RunConfig
from nfx.console import Printer
from nfx.data.split import split_counts


def split(cfg: RunConfig, samples, printer: Printer, run_dir: Path | None = None) -> list[str]:
    """train / valid / test per sample: user splits kept (leak-checked), the rest grouped by
    patient and stratified by label. Writes split_summary.json (patients per split, leaks)."""
    from nfx.data.split import assign_splits, group_keys, split_summary

    patients = [s.patient for s in samples]
    groups = group_keys([s.path for s in samples], patients)
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
                                  cfg.train.seed, allow_leak=cfg.data.allow_patient_leak)
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
        }
        runs.atomic_write_json(run_dir / runs.SPLIT_SUMMARY, summary)
    return splits


def write_splits(samples, split_of: list[str], run_dir: Path, printer: Printer) -> dict[str, dict[str, int]]:
    """splits.csv (which file went where) and the per-split counts, printed."""
    runs.atomic_write_csv(
        run_dir / runs.SPLITS,
        [{"path": s.path, "label": s.label, "patient": s.patient or "", "split": split_of[i]}
         for i, s in enumerate(samples)],
    )
    counts = split_counts([s.patient for s in samples], split_of)
    for sp, c in counts.items():
        printer.info(f"  {sp}: {c['images']} images, {c['patients']} patients")
    return counts
