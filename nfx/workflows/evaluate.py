"""evaluate: select the images → score them → choose thresholds (on the validation split) →
metrics with patient-bootstrap intervals → warnings and provenance → write evaluation.json,
predictions.csv, plots and the reports (rendered from the JSON as written)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nfx import runs
from nfx.config import EvaluateConfig
from nfx.console import Printer, Scoped
from nfx.errors import DataError
from nfx.evaluate.cautions import evaluation_warnings, selection_warning
from nfx.evaluate.result import Evaluation
from nfx.workflows.loading import LoadedRun, load_run
from nfx.workflows.scoring import (
    clip_fractions,
    copies_of,
    data_items,
    eval_probs,
    evaluation_plots,
    run_provenance,
)


def evaluate(run_dir: str | Path, data: str | None = None, printer: Printer | None = None,
             threshold: float | None = None, n_bootstrap: int = 1000, *, split: str = "valid",
             tta: bool = False, target_sensitivity: float | None = None, per_patient: bool = False,
             plots: bool = True) -> Evaluation:
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
    printer = Scoped(printer)  # every warning given from here on belongs in evaluation.json
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
    for w in evaluation_warnings(result, items, split_rows, data, clip_fractions(run), run.cfg.train.agc,
                                 run.info.from_scratch):
        printer.warn(w)
    if in_sample and (chosen := selection_warning([runs.read_json(run.run_dir / runs.METRICS, {})])):
        printer.warn(chosen)
    result["warnings"] = printer.warnings
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




def training_copies(run: LoadedRun, split_rows, paths: list[str], printer: Printer) -> tuple[set[int], list[dict]]:
    """Images of new data that are copies of this run's training images (nfx.data.copies): their
    indices and one record each (file, training file, correlation). They are left out of the
    metrics — a model scored on images it trained on measures memory, not generalisation — and
    listed in evaluation.json; the warning says how many."""
    train = [i for i, r in enumerate(split_rows) if r["split"] == "train"]
    return copies_of(run.run_dir, split_rows, train, run, paths, printer)


def _existing_items(run: LoadedRun, rows: list[dict[str, str]]) -> list[tuple[str, str, str | None]]:
    items = [(r["path"], r["label"], r["patient"] or None) for r in rows]
    missing = [p for p, _, _ in items if not Path(p).is_file()]
    if missing:
        raise DataError(
            f"{missing[0]}: listed in {run.run_dir / runs.SPLITS} but missing ({len(missing)} files); "
            "restore the data folder or pass DATA explicitly"
        )
    return items


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
    probs = eval_probs(run, paths, tta, Scoped(printer, quiet=True, prefix="validation split (thresholds): "))
    label_of = {r["path"]: r["label"] for r in rows}
    ok = np.isfinite(probs).all(1)
    classes = list(run.info.classes)
    y_pos = np.array([classes.index(label_of[p]) == pos for p in paths], dtype=int)[ok]
    p_pos = probs[ok, pos]
    runs.atomic_write_json(cache, {"key": key, "y_pos": y_pos.tolist(), "p_pos": p_pos.tolist()})
    return y_pos, p_pos


