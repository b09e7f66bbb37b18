"""`nfx evaluate PARENT` for a --folds parent: every image scored by the fold that did not train on
it (out-of-fold), one set of metrics with patient-bootstrap intervals over all of them, a per-fold
table, thresholds cross-fitted (each fold's chosen on the other folds' out-of-fold scores, never on
its own); `nfx evaluate PARENT DATA`: the fold ensemble (mean of the K softmax outputs) on new data,
its thresholds chosen on the pooled out-of-fold scores."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from nfx import runs
from nfx.config import EvaluateConfig, RunConfig
from nfx.console import Printer, Scoped
from nfx.errors import DataError
from nfx.evaluate.cautions import selection_warning
from nfx.evaluate.result import Evaluation
from nfx.records import ModelInfo
from nfx.workflows.folds import FOLDS, fold_dir
from nfx.workflows.scoring import eval_probs


def evaluate_folds(parent: str | Path, data: str | None = None, printer: Printer | None = None,
                   threshold: float | None = None, n_bootstrap: int = 1000, *, split: str = "valid", tta: bool = False,
                   target_sensitivity: float | None = None, plots: bool = True) -> Evaluation:
    """Out-of-fold metrics (split 'valid'), or the fold ensemble on the user's test split
    (split 'test') or on a DATA folder; written into the parent like a single run's evaluation."""
    from nfx.evaluate.metrics import evaluate_predictions, operating_point, positive_index
    from nfx.workflows.loading import load_folds

    printer = printer or Printer()
    printer = Scoped(printer)  # every warning given from here on belongs in evaluation.json
    EvaluateConfig(split=split, threshold=threshold, target_sensitivity=target_sensitivity,
                   n_bootstrap=n_bootstrap, tta=tta).validate()
    parent = runs.require_run(Path(parent), FOLDS)
    cfg = RunConfig.read_run(parent / runs.CONFIG)
    info = ModelInfo.read(parent)
    classes = list(info.classes)
    k = int(cfg.train.folds or 0)
    models = load_folds(parent)
    rows = runs.read_csv(parent / FOLDS)
    cv = [r for r in rows if r["split"] == "cv"]
    oof = np.zeros((len(cv), len(classes)))
    fold_of = np.array([int(r["fold"]) for r in cv])
    for f, run in enumerate(models, 1):
        idx = np.flatnonzero(fold_of == f)
        oof[idx] = eval_probs(run, [cv[i]["path"] for i in idx], tta, printer)
    y_oof = np.array([classes.index(r["label"]) for r in cv])
    binary = len(classes) == 2
    pos = positive_index(classes) if binary else None
    found: list[dict] = []
    oof_mode = data is None and split == "valid"
    if oof_mode:
        items = [(r["path"], r["label"], r["patient"] or None) for r in cv]
        probs, y, source = oof, y_oof, f"out-of-fold predictions of the {k} folds of {cfg.data.path}"
    elif data is None:
        items = [(r["path"], r["label"], r["patient"] or None) for r in rows if r["split"] == "test"]
        if not items:
            raise DataError(f"{parent / FOLDS}: no images in split 'test'; evaluate the parent without --split "
                            "(out-of-fold) or pass a DATA folder")
        probs = np.mean([eval_probs(run, [p for p, _, _ in items], tta, printer) for run in models], axis=0)
        source = f"test split of {cfg.data.path} (mean of the {k} fold models' softmax outputs)"
    else:
        items, probs, found = _ensemble_on(data, models, parent, cfg, info, rows, tta, printer)
        source = f"all images of {data} (mean of the {k} fold models' softmax outputs)"
    if not oof_mode:
        y = np.array([classes.index(lbl) for _, lbl, _ in items])
    ok = np.isfinite(probs).all(axis=1)
    items, probs, y = [items[i] for i in np.flatnonzero(ok)], probs[ok], y[ok]
    if not len(items):
        raise DataError("no image could be evaluated; see the warnings above")
    patients = [pid or f"file:{p}" for p, _, pid in items]
    head = 0.5 if threshold is None else float(threshold)
    ops: dict[str, tuple[float, str]] = {}
    crossfit: dict[str, Any] = {}
    if binary:
        if oof_mode:
            crossfit = _crossfit_points(y_oof == pos, oof[:, pos], fold_of, k, target_sensitivity)
        else:
            from nfx.evaluate.thresholds import choose_operating_points

            choice = choose_operating_points((y_oof == pos).astype(int), oof[:, pos], threshold, target_sensitivity,
                                             False)
            ops, head = {n: (t, "pooled out-of-fold scores") for n, (t, _) in choice.points.items()}, choice.headline
    result, pred, curves = evaluate_predictions(y, probs, classes, patients, head, ops, n_bootstrap, seed=0)
    for name, point in crossfit.items():  # each image judged by the threshold its own fold was given
        adj = _rescaled(oof[:, pos], point["per_fold"], fold_of)[ok]
        result["operating_points"][name] = {**operating_point((y == pos).astype(int), adj, 0.5),
                                            "threshold": None, "thresholds_per_fold": point["per_fold"],
                                            "chosen_on": "the other folds' out-of-fold scores (cross-fitted)"}
    result["threshold_source"] = "given by the user (--threshold)" if threshold is not None else "default"
    result.update(run=parent.name, data=source, split=None, tta=tta, weights_source=info.weights_source,
                  arch=info.arch, folds=_per_fold(y_oof, oof, fold_of, k, classes) if oof_mode else None)
    if data is not None:
        result["copies_of_training"] = found
    if oof_mode and (chosen := selection_warning([runs.read_json(fold_dir(parent, f) / runs.METRICS, {})
                                                   for f in range(1, k + 1)])):
        printer.warn(chosen)
    result["warnings"] = printer.warnings
    result["provenance"] = _provenance(parent, cfg, info, rows)
    images: dict[str, bytes] = {}
    if plots:
        from nfx.workflows.scoring import evaluation_plots

        images = evaluation_plots(SimpleRun(parent), result, curves)
        (parent / runs.PLOTS).mkdir(exist_ok=True)
        for name, png in images.items():
            runs.atomic_write_bytes(parent / runs.PLOTS / f"{name}.png", png)
        result["plots"] = {name: f"{runs.PLOTS}/{name}.png" for name in images}
    runs.atomic_write_json(parent / runs.EVALUATION, result)
    fold_col = {r["path"]: r["fold"] for r in cv} if oof_mode else {}
    out_rows = []
    for (path, label, pid), pr, pd in zip(items, probs, pred, strict=True):
        row = {"file": path, "patient": pid or "", "label": label, "fold": fold_col.get(path, "ensemble")}
        row.update({f"p_{c}": round(float(v), 6) for c, v in zip(classes, pr, strict=True)})
        row["prediction"] = classes[int(pd)]
        out_rows.append(row)
    runs.atomic_write_csv(parent / runs.PREDICTIONS, out_rows)
    from nfx.evaluate.report import render_html, render_markdown

    written = json.loads((parent / runs.EVALUATION).read_text())
    runs.atomic_write_text(parent / runs.REPORT, render_markdown(written))
    runs.atomic_write_text(parent / runs.REPORT_HTML, render_html(written, images))
    return result


class SimpleRun:
    """What the plot helper reads of a run: its folder (history.csv is per fold, so none here)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir


def _crossfit_points(y_pos: np.ndarray, p_pos: np.ndarray, fold_of: np.ndarray, k: int,
                     target_sensitivity: float | None) -> dict[str, Any]:
    """Youden (and the target-sensitivity threshold) of each fold, chosen on the other folds."""
    from nfx.evaluate.thresholds import threshold_for_sensitivity, youden_threshold

    out: dict[str, Any] = {}
    rules = [("Youden", youden_threshold)]
    if target_sensitivity is not None:
        rules.append((f"sensitivity ≥ {target_sensitivity:g}",
                      lambda y, p: threshold_for_sensitivity(y, p, target_sensitivity)))
    for name, rule in rules:
        per_fold = []
        for f in range(1, k + 1):
            rest = fold_of != f
            t = rule(y_pos[rest].astype(int), p_pos[rest])
            if t is None:
                break
            per_fold.append(round(float(t), 6))
        if len(per_fold) == k:
            out[name] = {"per_fold": per_fold}
    return out


def _rescaled(p: np.ndarray, thresholds: list[float], fold_of: np.ndarray) -> np.ndarray:
    """Scores mapped so that 0.5 is each image's own fold threshold (monotone within a fold)."""
    t = np.asarray(thresholds)[fold_of - 1]
    return np.where(p >= t, 0.5 + 0.5 * (p - t) / np.maximum(1 - t, 1e-12), 0.5 * p / np.maximum(t, 1e-12))


def _per_fold(y: np.ndarray, probs: np.ndarray, fold_of: np.ndarray, k: int, classes: list[str]) -> dict[str, Any]:
    from nfx.evaluate.metrics import positive_index, roc_auc

    pos = positive_index(classes) if len(classes) == 2 else None
    rows = []
    for f in range(1, k + 1):
        m = fold_of == f
        rows.append({"fold": f, "n_images": int(m.sum()),
                     "accuracy": round(float((probs[m].argmax(1) == y[m]).mean()), 6),
                     "roc_auc": roc_auc(y[m], probs[m], pos)})
    out: dict[str, Any] = {"k": k, "per_fold": rows}
    for key in ("accuracy", "roc_auc"):
        vals = [r[key] for r in rows if r[key] is not None]
        out[f"{key}_mean"] = round(statistics.fmean(vals), 6) if vals else None
        out[f"{key}_sd"] = round(statistics.stdev(vals), 6) if len(vals) > 1 else None
    return out


def _ensemble_on(data: str, models: list[Any], parent: Path, cfg: RunConfig, info: ModelInfo, rows, tta: bool,
                 printer: Printer) -> tuple[list[tuple[str, str, str | None]], np.ndarray, list[dict]]:
    """(items, mean softmax of the fold models) on a new folder; copies of any image the folds trained
    on are left out (every cross-validated image trained K-1 of the K models)."""
    from nfx.workflows.scoring import copies_of, data_items

    items = data_items(data, cfg, list(info.classes), printer)
    paths = [p for p, _, _ in items]
    probs = np.mean([eval_probs(run, paths, tta, printer) for run in models], axis=0)
    trained = [i for i, r in enumerate(rows) if r["split"] == "cv"]
    drop, found = copies_of(parent, rows, trained, models[0], paths, printer)
    if found and len(drop) == len(items):
        raise DataError(f"{data}: every image is a copy of an image the folds trained on (e.g. {found[0]['file']} ≈ "
                        f"{found[0]['training_file']}); evaluate on images the models have not seen")
    keep = [i for i in range(len(items)) if i not in drop]
    return [items[i] for i in keep], probs[keep], found


def _provenance(parent: Path, cfg: RunConfig, info: ModelInfo, rows) -> dict[str, Any]:
    from nfx.workflows.scoring import run_provenance

    split_rows = [{**r, "split": "train" if r["split"] == "cv" else r["split"]} for r in rows]
    prov = run_provenance(parent, cfg, info, split_rows)
    prov["training"] = f"{cfg.train.folds}-fold cross-validation; " + str(prov.get("training", ""))
    return prov
