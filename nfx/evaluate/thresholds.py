"""Threshold policy (binary): choose an operating point on one set of predictions (the
validation split), to apply it unchanged to another. numpy + scikit-learn only."""

from __future__ import annotations

import numpy as np


def youden_threshold(y_pos: np.ndarray, p_pos: np.ndarray) -> float | None:
    """Threshold maximising sensitivity + specificity − 1 (Youden's J) on these predictions
    (scikit-learn's ROC curve); None when only one class is present."""
    from sklearn.metrics import roc_curve

    y_pos = np.asarray(y_pos, dtype=int)
    if len(np.unique(y_pos)) < 2:
        return None
    fpr, tpr, thr = roc_curve(y_pos, p_pos, drop_intermediate=False)
    ok = np.isfinite(thr)  # thr[0] is +inf (nothing predicted positive)
    k = int(np.argmax(np.where(ok, tpr - fpr, -np.inf)))
    return float(thr[k])


def threshold_for_sensitivity(y_pos: np.ndarray, p_pos: np.ndarray, target: float) -> float | None:
    """The highest threshold whose sensitivity on these predictions is ≥ `target` (so the most
    specific operating point that still reaches the target); None without positives."""
    from sklearn.metrics import roc_curve

    if not 0.0 < target <= 1.0:
        raise ValueError("target sensitivity must be in (0, 1]")
    y_pos = np.asarray(y_pos, dtype=int)
    if len(np.unique(y_pos)) < 2:
        return None
    _, tpr, thr = roc_curve(y_pos, p_pos, drop_intermediate=False)
    ok = np.flatnonzero((tpr >= target - 1e-12) & np.isfinite(thr))
    return float(thr[ok[0]]) if len(ok) else None
