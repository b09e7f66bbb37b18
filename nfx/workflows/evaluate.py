"""evaluate: select the images → score them → choose thresholds (on the validation split) →
metrics with patient-bootstrap intervals → warnings and provenance → write evaluation.json,
predictions.csv, plots and the reports (rendered from the JSON as written)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nfx import runs
from nfx.config import EvaluateConfig
from nfx.console import Printer
from nfx.errors import DataError
from nfx.evaluate.cautions import evaluation_warnings, provenance
from nfx.workflows.loading import LoadedRun, load_run, predict_probs


def evaluate(run_dir: str | Path, data: str | None = None, printer: Printer | None = None,
             threshold: float | None = None, n_bootstrap: int = 1000, *, split: str = "valid",
             tta: bool = False, target_sensitivity: float | None = None, per_patient: bool = False,
             plots: bool = True) -> dict[str, Any]:
    """Evaluate a run on its validation/test split or on a DATA folder.

    Writes evaluation.json, predictions.csv, plots/*.png, report.md and report.html into the run
    folder. The headline threshold is `threshold`, else the one reaching `target_sensitivity` on
    the validation split, else 0.5. Youden's threshold is always chosen on the validation split
    and applied unchanged to other data (said to be in-sample when evaluating 'valid' itself).
    """
    printer = printer or Printer()
    from nfx.workflows.folds import is_folds_parent

    if is_folds_parent(run_dir):  # a --folds parent: out-of-fold metrics, or the fold ensemble
        if per_patient:
            printer.warn("--per-patient is not yet computed for a --folds parent; evaluate a fold for it")
        from nfx.workflows.folds_eval import evaluate_folds

        return evaluate_folds(run_dir, data, printer, threshold, n_bootstrap, split=split, tta=tta,
                              target_sensitivity=target_sensitivity, plots=plots)
    n_warn = len(printer.warnings)
    EvaluateConfig(split=split, threshold=threshold, target_sensitivity=target_sensitivity,
                   n_bootstrap=n_bootstrap, tta=tta, per_patient=per_patient).validate()  # before any work
    run = load_run(run_dir)
    classes = list(run.info.classes)
    runs.require_run(run.run_dir, runs.SPLITS)  # the run's own split record: evaluation uses its validation split
    split_rows = runs.read_csv(run.run_dir / runs.SPLITS)
    if data is None:
        rows = [r for r in split_rows if r["split"] == split]
        if not rows:
            have = sorted({r["split"] for r in split_rows})
            raise DataError(f"{run.run_dir / runs.SPLITS}: no images in split {split!r} (this run has "
                            f"{', '.join(have)}); use --split valid or pass a DATA folder")
        source = f"{split} split of {run.cfg.data.path}"
        items = _existing_items(run, rows)
    else:
        items = data_items(data, run.cfg, classes, printer)
        source = f"all images of {data}"
    import numpy as np

    probs = eval_probs(run, [p for p, _, _ in items], tta, printer)
    keep = [i for i in range(len(items)) if np.isfinite(probs[i]).all()]
    if not keep:
        raise DataError("no image could be evaluated; see the warnings above")
    items = [items[i] for i in keep]
    probs = probs[keep]
    copies_of_training: list[dict[str, Any]] = []
    if data is not None:
        drop, copies_of_training = training_copies(run, split_rows, [p for p, _, _ in items], printer)
        if drop:
            if len(drop) == len(items):
                raise DataError(f"{data}: every image is a copy of a training image of this run (e.g. "
                                f"{copies_of_training[0]['file']} ≈ {copies_of_training[0]['training_file']}); "
                                "evaluate on images the model has not seen")
            kept = [i for i in range(len(items)) if i not in drop]
            items = [items[i] for i in kept]
            probs = probs[kept]
    y = np.array([classes.index(lbl) for _, lbl, _ in items])
    patients = [pid or f"file:{p}" for p, _, pid in items]

    from nfx.evaluate.metrics import aggregate_by_patient, evaluate_predictions, positive_index
    from nfx.evaluate.thresholds import choose_operating_points

    in_sample = data is None and split == "valid"
    head, threshold_source = (0.5, "default") if threshold is None else (float(threshold), "given by the user (--threshold)")
    ops: dict[str, tuple[float, str]] = {}
    if len(classes) == 2:
        pos = positive_index(classes)
        if in_sample:
            vy, vp = (y == pos).astype(int), probs[:, pos]
        else:
            vy, vp = _validation_scores(run, split_rows, pos, tta, printer)
        choice = choose_operating_points(vy, vp, threshold, target_sensitivity, in_sample)
        ops, head, threshold_source = choice.points, choice.headline, choice.source
        for w in choice.warnings:
            printer.warn(w)

    result, pred, curves = evaluate_predictions(y, probs, classes, patients, head, ops, n_bootstrap, seed=0)
    if len(classes) != 2:
        result["threshold"] = None
    else:
        result["threshold_source"] = threshold_source
    result.update(run=run.run_dir.name, data=source, split=split if data is None else None, tta=tta,
                  weights_source=run.info.weights_source, arch=run.info.arch)
    if data is not None:
        result["copies_of_training"] = copies_of_training
    if per_patient:
        try:
            py, pp, pids = aggregate_by_patient(y, probs, patients,
                                                positive_index(classes) if len(classes) == 2 else None)
            pl, _, _ = evaluate_predictions(py, pp, classes, pids, head, None, n_bootstrap, seed=0)
            result["patient_level"] = {k: pl.get(k) for k in (
                "n_patients", "accuracy", "balanced_accuracy", "roc_auc", "roc_auc_ci", "sensitivity",
                "sensitivity_ci", "specificity", "specificity_ci", "positive_class", "confusion_matrix",
                "ece", "brier")}
        except ValueError as e:
            printer.warn(f"per-patient aggregation skipped: {e}")
    for w in evaluation_warnings(result, items, split_rows, data, _clip_fractions(run), run.cfg.train.agc,
                                 run.info.from_scratch):
        printer.warn(w)
    result["warnings"] = printer.warnings[n_warn:]
    result["provenance"] = run_provenance(run.run_dir, run.cfg, run.info, split_rows)

    images: dict[str, bytes] = {}
    if plots:
        images = evaluation_plots(run, result, curves)
        (run.run_dir / runs.PLOTS).mkdir(exist_ok=True)
        for name, png in images.items():
            runs.atomic_write_bytes(run.run_dir / runs.PLOTS / f"{name}.png", png)
        result["plots"] = {name: f"{runs.PLOTS}/{name}.png" for name in images}
    runs.atomic_write_json(run.run_dir / runs.EVALUATION, result)
    rows = []
    for (path, label, pid), pr, pd in zip(items, probs, pred):
        row = {"file": path, "patient": pid or "", "label": label}
        row.update({f"p_{c}": round(float(v), 6) for c, v in zip(classes, pr)})
        row["prediction"] = classes[int(pd)]
        rows.append(row)
    runs.atomic_write_csv(run.run_dir / runs.PREDICTIONS, rows)
    from nfx.evaluate.report import render_html, render_markdown

    # rendered from the JSON as written (habit 10): what the report says is what the file holds
    written = json.loads((run.run_dir / runs.EVALUATION).read_text())
    runs.atomic_write_text(run.run_dir / runs.REPORT, render_markdown(written))
    runs.atomic_write_text(run.run_dir / runs.REPORT_HTML, render_html(written, images))
    return result




def data_items(data: str, cfg: Any, classes: list[str], printer: Printer) -> list[tuple[str, str, str | None]]:
    """(path, label, patient) of a DATA folder to evaluate a model on, found as the run found its
    own (pseudonyms like its splits.csv; raw ids for runs from before that). Label folders the
    model does not know are refused; files that cannot be read are warned about, not dropped silently."""
    from nfx.data.discover import discover

    disc = discover(data, cfg.data.patient_regex, pseudonymise=cfg.data.keep_patient_ids is False)
    unknown = sorted(set(disc.classes) - set(classes))
    if unknown:
        raise DataError(f"{data}: label folder(s) {unknown} are not classes of this model {classes}; "
                        "move them out of the folder or evaluate a folder with only these classes")
    if disc.bad:
        printer.warn(f"{len(disc.bad)} file(s) in {data} cannot be evaluated and are left out "
                     f"(first: {disc.bad[0][0]}: {disc.bad[0][1]})")
    return [(s.path, s.label, s.patient) for s in disc.samples]


def training_copies(run: LoadedRun, split_rows, paths: list[str], printer: Printer) -> tuple[set[int], list[dict]]:
    """Images of new data that are copies of this run's training images (nfx.data.copies): their
    indices and one record each (file, training file, correlation). They are left out of the
    metrics — a model scored on images it trained on measures memory, not generalisation — and
    listed in evaluation.json; the warning says how many."""
    train = [i for i, r in enumerate(split_rows) if r["split"] == "train"]
    return copies_of(run.run_dir, split_rows, train, run, paths, printer)


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


def _existing_items(run: LoadedRun, rows: list[dict[str, str]]) -> list[tuple[str, str, str | None]]:
    items = [(r["path"], r["label"], r["patient"] or None) for r in rows]
    missing = [p for p, _, _ in items if not Path(p).is_file()]
    if missing:
        raise DataError(
            f"{missing[0]}: listed in {run.run_dir / runs.SPLITS} but missing ({len(missing)} files); "
            "restore the data folder or pass DATA explicitly"
        )
    return items


class _Flipped:
    """Model wrapper for horizontal-flip TTA (flip the width axis of NCHW input)."""

    def __init__(self, model):
        self.model = model

    def parameters(self):
        return self.model.parameters()

    def __call__(self, x):
        return self.model(x.flip(-1))


def eval_probs(run: LoadedRun, paths: list[str], tta: bool, printer: Printer):
    probs, bad = predict_probs(run.model, paths, run.info, run.cfg.data.cache_dir, printer)
    if bad:
        printer.warn(f"{len(bad)} file(s) could not be decoded and are left out (first: {bad[0][0]}: {bad[0][1]})")
    if tta:
        flipped, _ = predict_probs(_Flipped(run.model), paths, run.info, run.cfg.data.cache_dir, printer)
        probs = (probs + flipped) / 2
    return probs


def _validation_scores(run: LoadedRun, split_rows, pos: int, tta: bool, printer: Printer):
    """(is-positive labels, P(positive)) on the validation split, for choosing thresholds that are
    then applied to other data. Cached in valid_scores.json, keyed by the weights file and TTA."""
    import numpy as np

    w = (run.run_dir / runs.WEIGHTS).stat()
    key = {"weights_size": w.st_size, "weights_mtime_ns": w.st_mtime_ns, "tta": tta}
    cache = run.run_dir / runs.VALID_SCORES
    if cache.is_file():
        try:
            c = json.loads(cache.read_text())
            if c.get("key") == key:
                return np.array(c["y_pos"], dtype=int), np.array(c["p_pos"], dtype=np.float64)
        except (ValueError, KeyError):
            pass
    rows = [r for r in split_rows if r["split"] == "valid"]
    paths = [r["path"] for r in rows if Path(r["path"]).is_file()]
    if not paths:
        return None, None
    printer.info(f"choosing thresholds on the validation split ({len(paths)} images)")
    probs = eval_probs(run, paths, tta, Printer(quiet=True))
    label_of = {r["path"]: r["label"] for r in rows}
    ok = np.isfinite(probs).all(1)
    classes = list(run.info.classes)
    y_pos = np.array([classes.index(label_of[p]) == pos for p in paths], dtype=int)[ok]
    p_pos = probs[ok, pos]
    runs.atomic_write_json(cache, {"key": key, "y_pos": y_pos.tolist(), "p_pos": p_pos.tolist()})
    return y_pos, p_pos


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


def _clip_fractions(run: LoadedRun) -> list[float]:
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
