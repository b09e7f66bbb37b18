"""Classification metrics from labels and probabilities (numpy + scikit-learn; no torch/fastai).

Binary tasks have a positive class (the disease); sensitivity = recall of the positive class,
specificity = recall of the negative class, at a probability threshold on P(positive).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

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
