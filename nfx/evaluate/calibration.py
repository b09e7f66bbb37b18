"""Calibration: expected calibration error, Brier score, reliability-diagram bins.
numpy + scikit-learn only."""

from __future__ import annotations

from typing import Any

import numpy as np


def calibration(y: np.ndarray, probs: np.ndarray, pos: int | None, n_bins: int = 10) -> dict[str, Any]:
    """Expected calibration error, Brier score and the reliability-diagram bins.

    Binary: bins of P(positive) against the observed fraction of positives (what a clinician
    reads as "of the cases given 80%, how many had the disease"); the Brier score is
    scikit-learn's on P(positive). More classes: bins of the top-class confidence against the
    accuracy (the usual multi-class ECE); Brier = mean squared error of the probability vector.
    ECE = Σ_b (n_b / N) · |mean predicted_b − observed_b| over equal-width bins on [0, 1].
    """
    from sklearn.metrics import brier_score_loss

    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    if pos is not None:
        conf = probs[:, pos]
        hit = (y == pos).astype(float)
        brier = float(brier_score_loss((y == pos).astype(int), conf, pos_label=1))
        kind = "P(positive) vs observed positive fraction"
    else:
        conf = probs.max(1)
        hit = (probs.argmax(1) == y).astype(float)
        brier = float(np.mean(np.sum((probs - np.eye(probs.shape[1])[y]) ** 2, axis=1)))
        kind = "top-class confidence vs accuracy"
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins like scikit-learn's calibration_curve (0 goes to the first bin)
    which = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        m = which == b
        n = int(m.sum())
        mp = float(conf[m].mean()) if n else None
        ob = float(hit[m].mean()) if n else None
        if n:
            ece += n / len(y) * abs(mp - ob)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n,
                     "mean_predicted": mp, "observed": ob})
    return {"ece": float(ece) if len(y) else None, "brier": brier, "n_bins": n_bins, "kind": kind,
            "bins": bins}
