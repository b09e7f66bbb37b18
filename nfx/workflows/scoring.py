"""The steps of an evaluation shared by one run (nfx.workflows.evaluate) and a --folds parent
(nfx.workflows.folds_eval): the images of a DATA folder, their copies among the training images,
scoring, provenance and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nfx import runs
from nfx.console import Printer
from nfx.errors import DataError
from nfx.evaluate.cautions import provenance
from nfx.workflows.loading import LoadedRun, predict_probs


def data_items(data: str, cfg: Any, classes: list[str], printer: Printer) -> list[tuple[str, str, str | None]]:
    """(path, label, patient) of a DATA folder to evaluate a model on, found as the run found its
    own (pseudonyms like its splits.csv; raw ids for runs from before that). Label folders the
    model does not know are refused; files that cannot be read are warned about, not dropped silently."""
    from nfx.data.discover import discover

    disc = discover(data, cfg.data.patient_regex, pseudonymise=not cfg.data.keep_patient_ids)
    unknown = sorted(set(disc.classes) - set(classes))
    if unknown:
        raise DataError(f"{data}: label folder(s) {unknown} are not classes of this model {classes}; "
                        "move them out of the folder or evaluate a folder with only these classes")
    if disc.bad:
        printer.warn(f"{len(disc.bad)} file(s) in {data} cannot be evaluated and are left out "
                     f"(first: {disc.bad[0][0]}: {disc.bad[0][1]})")
    return [(s.path, s.label, s.patient) for s in disc.samples]


def copies_of(folder: Path, split_rows, ref: list[int], run: LoadedRun, paths: list[str],
              printer: Printer) -> tuple[set[int], list[dict]]:
    """Which of `paths` are copies of the rows `ref` of `folder`'s record (its copy_signatures.npy,
    one per row); `run` gives the cache and preprocessing the paths were scored with."""
    import numpy as np

    from nfx.data.cache import ImageCache, signatures
    from nfx.data.copies import cross_matches

    sig_file = folder / runs.COPY_SIGNATURES
    if not sig_file.is_file():
        printer.warn(f"{folder.name}: made before nfx recorded copy signatures; new data was not checked for "
                     "copies of training images")
        return set(), []
    try:
        ref_all = np.load(sig_file, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{sig_file}: unreadable ({e}); delete it to evaluate without the copy check") from e
    if len(ref_all) != len(split_rows):
        raise DataError(f"{sig_file}: {len(ref_all)} signatures for {len(split_rows)} rows of the run's split record; "
                        "delete it to evaluate without the copy check")
    cache = ImageCache.for_spec(run.cfg.data.cache_dir, run.info.input)  # filled when the images were scored
    matches = cross_matches(signatures([cache.entry(p) for p in paths]), ref_all[ref])
    out = [{"file": paths[q], "training_file": split_rows[ref[r]]["path"], "correlation": c} for q, r, c in matches]
    if out:
        printer.warn(f"{len(out)} of {len(paths)} image(s) are copies of training images of this run (e.g. "
                     f"{out[0]['file']} ≈ {out[0]['training_file']}); left out of the metrics, listed in "
                     f"{runs.EVALUATION} under copies_of_training")
    return {q for q, _, _ in matches}, out


def eval_probs(run: LoadedRun, paths: list[str], tta: bool, printer: Printer):
    probs, bad = predict_probs(run.model, paths, run.info, run.cfg.data.cache_dir, printer)
    if bad:
        printer.warn(f"{len(bad)} file(s) could not be decoded and are left out (first: {bad[0][0]}: {bad[0][1]})")
    if tta:
        flipped, _ = predict_probs(_Flipped(run.model), paths, run.info, run.cfg.data.cache_dir, printer)
        probs = (probs + flipped) / 2
    return probs


def run_provenance(folder: Path, cfg: Any, info: Any, split_rows) -> dict[str, Any]:
    """provenance() of a run folder (its env.json) plus the copies line of its split_summary.json."""
    from nfx.evaluate.cautions import copies_line

    env = json.loads((folder / runs.ENV).read_text()) if (folder / runs.ENV).is_file() else {}
    prov = provenance(cfg, info, env, split_rows)
    try:
        summary = json.loads((folder / runs.SPLIT_SUMMARY).read_text())
    except (OSError, ValueError):
        summary = {}
    prov["copies"] = copies_line(summary.get("copies") if isinstance(summary, dict) else None)
    return prov


def clip_fractions(run: LoadedRun) -> list[float]:
    hist = run.run_dir / runs.HISTORY
    if not hist.is_file():
        return []
    return [float(r["agc_clip_fraction"]) for r in runs.read_csv(hist) if r.get("agc_clip_fraction")]


def evaluation_plots(run: LoadedRun, ev: dict[str, Any], curves: dict[str, Any]) -> dict[str, bytes]:
    from nfx.evaluate import plots

    out: dict[str, bytes] = {}
    if curves["roc"]:
        out["roc"] = plots.roc_png(curves["roc"], ev["roc_auc"], ev.get("roc_auc_ci"), curves.get("roc_band"))
        out["pr"] = plots.pr_png(curves["pr"])
    sub = f"threshold {ev['threshold']:.3g}" if ev.get("threshold") is not None else "argmax"
    out["confusion"] = plots.confusion_png(ev["confusion_matrix"], ev["classes"], sub)
    out["reliability"] = plots.reliability_png(curves["calibration"])
    hist = run.run_dir / runs.HISTORY
    if hist.is_file():
        rows = runs.read_csv(hist)
        if rows:
            out["training"] = plots.training_png(rows)
    return out


class _Flipped:
    """Model wrapper for horizontal-flip TTA (flip the width axis of NCHW input)."""

    def __init__(self, model):
        self.model = model

    def parameters(self):
        return self.model.parameters()

    def __call__(self, x):
        return self.model(x.flip(-1))
