"""Classification metrics from labels and probabilities (numpy + scikit-learn; no torch/fastai).

Binary tasks have a positive class (the disease); sensitivity = recall of the positive class,
specificity = recall of the negative class, at a probability threshold on P(positive).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nfx.evaluate.calibration import calibration  # noqa: F401,E402  (re-exported)
from nfx.evaluate.thresholds import threshold_for_sensitivity, youden_threshold  # noqa: F401,E402

NEGATIVE_NAMES = {"normal", "healthy", "negative", "control", "controls", "benign", "no", "none", "0", "absent"}


def positive_index(classes: Sequence[str]) -> int:
    """Index of the positive class of a binary task: the one that is not a 'normal'-like name,
    else the second class (sorted order)."""
    if len(classes) != 2:
        raise ValueError("positive class is defined for binary tasks only")
    neg = [i for i, c in enumerate(classes) if c.lower().replace("-", "_").split("_")[0] in NEGATIVE_NAMES]
    if len(neg) == 1:
        return 1 - neg[0]
    return 1


def binary_at_threshold(y_pos: np.ndarray, p_pos: np.ndarray, threshold: float) -> dict[str, Any]:
    pred = (p_pos >= threshold).astype(int)
    tp = int(((pred == 1) & (y_pos == 1)).sum())
    tn = int(((pred == 0) & (y_pos == 0)).sum())
    fp = int(((pred == 1) & (y_pos == 0)).sum())
    fn = int(((pred == 0) & (y_pos == 1)).sum())

    def div(a: int, b: int) -> float | None:
        return a / b if b else None

    return {
        "threshold": float(threshold),
        "sensitivity": div(tp, tp + fn),
        "specificity": div(tn, tn + fp),
        "ppv": div(tp, tp + fp),
        "npv": div(tn, tn + fn),
        "tp": tp, "tn": tn, "fp": fp, "fn": fn,
    }


def roc_auc(y_true: np.ndarray, probs: np.ndarray, pos: int | None) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y_true)) < 2:
        return None
    if pos is not None:
        return float(roc_auc_score((y_true == pos).astype(int), probs[:, pos]))
    present = np.unique(y_true)
    if len(present) < probs.shape[1]:
        return None
    return float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in `y` (scikit-learn's definition), without its
    'y_pred contains classes not in y_true' warning: evaluating a folder that holds only some of
    the model's classes is legitimate."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y, pred))


def classification_metrics(
    y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str], threshold: float = 0.5
) -> tuple[dict[str, Any], np.ndarray]:
    """(headline metrics, predicted class per image). Binary: prediction = P(positive) >= threshold; otherwise argmax."""
    from sklearn.metrics import accuracy_score, confusion_matrix

    y = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    binary = len(classes) == 2
    pos = positive_index(classes) if binary else None
    if binary:
        pred = np.where(probs[:, pos] >= threshold, pos, 1 - pos)
    else:
        pred = probs.argmax(1)
    out: dict[str, Any] = {
        "n_images": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": _balanced_accuracy(y, pred),
        "roc_auc": roc_auc(y, probs, pos),
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(len(classes)))).tolist(),
        "classes": list(classes),
    }
    if binary:
        at = binary_at_threshold((y == pos).astype(int), probs[:, pos], threshold)
        out.update(positive_class=classes[pos], threshold=threshold,
                   sensitivity=at["sensitivity"], specificity=at["specificity"],
                   ppv=at["ppv"], npv=at["npv"])
    else:
        out.update(positive_class=None, threshold=None, sensitivity=None, specificity=None)
    return out, pred


# ---------------------------------------------------------------------------------------------
# operating points (binary): thresholds are chosen on one set of predictions, applied to another
# ---------------------------------------------------------------------------------------------
def _clean(v: Any) -> Any:
    """JSON-safe number: NaN/inf → None (evaluation.json must round-trip exactly)."""
    if v is None:
        return None
    v = float(v)
    return v if np.isfinite(v) else None


def operating_point(y_pos: np.ndarray, p_pos: np.ndarray, threshold: float) -> dict[str, Any]:
    """Everything at one threshold on P(positive): counts, sensitivity, specificity, PPV, NPV
    (from `binary_at_threshold`), plus F1, MCC, accuracy and balanced accuracy from scikit-learn."""
    import warnings

    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    y_pos = np.asarray(y_pos, dtype=int)
    pred = (np.asarray(p_pos) >= threshold).astype(int)
    out = binary_at_threshold(y_pos, p_pos, threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["f1"] = _clean(f1_score(y_pos, pred, labels=[0, 1], pos_label=1, zero_division=np.nan))
        out["mcc"] = _clean(matthews_corrcoef(y_pos, pred)) if len(y_pos) else None
        out["accuracy"] = _clean(accuracy_score(y_pos, pred)) if len(y_pos) else None
        out["balanced_accuracy"] = _balanced_accuracy(y_pos, pred) if len(np.unique(y_pos)) == 2 else None
    return out


# ---------------------------------------------------------------------------------------------
# curves, calibration, per class
# ---------------------------------------------------------------------------------------------
def curves(y: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """ROC and precision-recall curves (scikit-learn) for plotting, one per positive class:
    binary → the positive class only; more classes → one-vs-rest per class present."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

    y = np.asarray(y, dtype=int)
    targets = [positive_index(classes)] if len(classes) == 2 else list(range(len(classes)))
    out: dict[str, Any] = {"roc": {}, "pr": {}}
    for k in targets:
        yk = (y == k).astype(int)
        if len(np.unique(yk)) < 2:
            continue
        fpr, tpr, _ = roc_curve(yk, probs[:, k])
        prec, rec, _ = precision_recall_curve(yk, probs[:, k])
        out["roc"][classes[k]] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        out["pr"][classes[k]] = {"recall": rec.tolist(), "precision": prec.tolist(),
                                 "ap": float(average_precision_score(yk, probs[:, k])),
                                 "prevalence": float(yk.mean())}
    return out


def pr_auc(y: np.ndarray, probs: np.ndarray, pos: int | None) -> float | None:
    """Average precision (scikit-learn): binary → the positive class; otherwise the macro mean
    over one-vs-rest tasks (None when a class is absent)."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2:
        return None
    if pos is not None:
        return float(average_precision_score((y == pos).astype(int), probs[:, pos]))
    if len(np.unique(y)) < probs.shape[1]:
        return None
    onehot = np.eye(probs.shape[1], dtype=int)[y]
    return float(average_precision_score(onehot, probs, average="macro"))


def per_class_metrics(y: np.ndarray, pred: np.ndarray, probs: np.ndarray,
                      classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One-vs-rest view of every class: precision (PPV), recall (sensitivity), specificity, F1,
    support and ROC AUC, from scikit-learn."""
    import warnings

    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    y = np.asarray(y, dtype=int)
    labels = list(range(len(classes)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=np.nan)
    out = {}
    for k, c in enumerate(classes):
        neg = y != k
        yk = (y == k).astype(int)
        out[c] = {
            "precision": _clean(prec[k]),
            "recall": _clean(rec[k]),
            "specificity": _clean(((pred != k) & neg).sum() / neg.sum()) if neg.any() else None,
            "f1": _clean(f1[k]),
            "support": int(sup[k]),
            "roc_auc": float(roc_auc_score(yk, probs[:, k])) if 0 < yk.sum() < len(yk) else None,
        }
    return out


def aggregate_by_patient(y: np.ndarray, probs: np.ndarray, patients: Sequence[str],
                         pos: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One row per patient, in order of first appearance: the mean of the patient's image
    probabilities and the patient's label. Binary (`pos` given): a patient is positive when any
    of their images is (e.g. one diseased eye). More classes: images of one patient with
    different labels raise ValueError, since nfx does not guess a patient-level diagnosis."""
    y = np.asarray(y, dtype=int)
    order: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        order.setdefault(p, []).append(i)
    ids, ys, ps = [], [], []
    for pid, ix in order.items():
        labels = set(y[ix].tolist())
        if len(labels) > 1 and pos is None:
            raise ValueError(f"patient {pid} has images with different labels; per-patient "
                             "aggregation of more than two classes needs one label per patient")
        ids.append(pid)
        ys.append(pos if pos in labels and len(labels) > 1 else labels.pop())
        ps.append(probs[ix].mean(0))
    return np.array(ys, dtype=int), np.array(ps), ids


# ---------------------------------------------------------------------------------------------
# bootstrap of the headline numbers (one pass of patient resamples for all of them)
# ---------------------------------------------------------------------------------------------
ROC_GRID = np.linspace(0.0, 1.0, 51)


def bootstrap_intervals(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], threshold: float | None,
                        patients: Sequence[str], n_resamples: int = 1000, seed: int = 0,
                        alpha: float = 0.05) -> dict[str, Any]:
    """95% percentile intervals over patient resamples for ROC AUC, sensitivity and specificity
    (binary, at `threshold`), plus a pointwise band of the ROC curve (TPR on a fixed FPR grid).
    More classes: the macro one-vs-rest ROC AUC only."""
    from sklearn.metrics import auc, roc_curve

    from nfx.evaluate.bootstrap import patient_bootstrap_many

    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    if len(classes) != 2:
        def multi(ix):
            return {"roc_auc": roc_auc(y[ix], probs[ix], None)}

        ci = patient_bootstrap_many(multi, patients, n_resamples, seed, alpha)
        return {"roc_auc_ci": ci.get("roc_auc"), "sensitivity_ci": None, "specificity_ci": None}
    pos = positive_index(classes)
    yp = (y == pos).astype(int)
    pp = probs[:, pos]

    def stat(ix):
        yy, ss = yp[ix], pp[ix]
        at = binary_at_threshold(yy, ss, threshold)
        out = {"sensitivity": at["sensitivity"], "specificity": at["specificity"]}
        if 0 < yy.sum() < len(yy):
            fpr, tpr, _ = roc_curve(yy, ss)
            out["roc_auc"] = float(auc(fpr, tpr))  # = roc_auc_score for binary labels
            out["roc_tpr"] = np.interp(ROC_GRID, fpr, tpr)
        return out

    import sklearn

    # inputs are validated once by the caller; skipping sklearn's per-call checks halves the loop
    with sklearn.config_context(skip_parameter_validation=True):
        ci = patient_bootstrap_many(stat, patients, n_resamples, seed, alpha)
    band = ci.get("roc_tpr")
    return {
        "roc_auc_ci": ci.get("roc_auc"),
        "sensitivity_ci": ci.get("sensitivity"),
        "specificity_ci": ci.get("specificity"),
        "roc_band": None if band is None else {"fpr": ROC_GRID.tolist(), "tpr_lo": band[0], "tpr_hi": band[1]},
    }


# ---------------------------------------------------------------------------------------------
# everything for one set of predictions
# ---------------------------------------------------------------------------------------------
def evaluate_predictions(
    y: Sequence[int], probs: np.ndarray, classes: Sequence[str], patients: Sequence[str],
    threshold: float = 0.5, operating_points: dict[str, tuple[float, str]] | None = None,
    n_bootstrap: int = 1000, seed: int = 0, n_bins: int = 10,
) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    """(JSON-ready metrics, predicted class per image, curves for plotting).

    `threshold` is the headline operating point (predictions, confusion matrix, sensitivity /
    specificity and their intervals); `operating_points` maps a name to (threshold, where it was
    chosen) and each is reported in full. Intervals resample `patients`."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    binary = len(classes) == 2
    pos = positive_index(classes) if binary else None
    result, pred = classification_metrics(y, probs, classes, threshold)
    result["n_patients"] = len(set(patients))
    result["pr_auc"] = pr_auc(y, probs, pos)
    if binary:
        at = operating_point((y == pos).astype(int), probs[:, pos], threshold)
        result["f1"], result["mcc"] = at["f1"], at["mcc"]
        result["operating_points"] = {
            name: {**operating_point((y == pos).astype(int), probs[:, pos], t), "chosen_on": how}
            for name, (t, how) in (operating_points or {}).items()
        }
    else:
        result["f1"] = float(f1_score(y, pred, labels=list(range(len(classes))), average="macro", zero_division=0))
        result["mcc"] = _clean(matthews_corrcoef(y, pred))
        result["operating_points"] = {}
    result["per_class"] = per_class_metrics(y, pred, probs, classes)
    cal = calibration(y, probs, pos, n_bins)
    result["ece"], result["brier"] = cal["ece"], cal["brier"]
    result["calibration"] = {k: cal[k] for k in ("kind", "n_bins", "bins")}
    ci = bootstrap_intervals(y, probs, classes, threshold, patients, n_bootstrap, seed)
    result["roc_auc_ci"] = ci["roc_auc_ci"]
    result["sensitivity_ci"] = ci["sensitivity_ci"]
    result["specificity_ci"] = ci["specificity_ci"]
    result["n_bootstrap"] = n_bootstrap
    result["bootstrap_seed"] = seed
    plot = curves(y, probs, classes)
    plot["roc_band"] = ci.get("roc_band")
    plot["calibration"] = cal
    return result, pred, plot
