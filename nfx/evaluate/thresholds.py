"""Threshold policy (binary): choose an operating point on one set of predictions (the
validation split), to apply it unchanged to another. numpy + scikit-learn only."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nfx.errors import DataError


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


@dataclass
class OperatingPoints:
    points: dict[str, tuple[float, str]]  # name → (threshold, where it was chosen)
    headline: float  # the threshold the report's sensitivity/specificity use
    source: str  # why that threshold
    warnings: list[str] = field(default_factory=list)


def choose_operating_points(vy: np.ndarray | None, vp: np.ndarray | None, threshold: float | None,
                            target_sensitivity: float | None, in_sample: bool) -> OperatingPoints:
    """The threshold policy of `nfx evaluate` (binary). `vy`/`vp`: is-positive labels and
    P(positive) of the validation split (None when it could not be read). The headline
    threshold is the user's `threshold`, else the highest one reaching `target_sensitivity` on
    the validation split, else 0.5; Youden's threshold is always chosen on the validation split.
    `in_sample`: the evaluated images are that validation split (thresholds are then optimistic)."""
    where = "valid split (in-sample: these same images)" if in_sample else "valid split"
    points: dict[str, tuple[float, str]] = {"default 0.5": (0.5, "fixed")}
    out = OperatingPoints(points, 0.5 if threshold is None else float(threshold),
                          "default" if threshold is None else "given by the user (--threshold)")
    yt = youden_threshold(vy, vp) if vy is not None else None
    if yt is not None:
        points["Youden"] = (yt, where)
    else:
        out.warnings.append("Youden threshold not available: the validation split has images of one class "
                            "only or could not be read")
    if target_sensitivity is not None:
        ts = threshold_for_sensitivity(vy, vp, target_sensitivity) if vy is not None else None
        if ts is None:
            raise DataError("--target-sensitivity needs validation images of both classes; pass --threshold instead")
        out.headline = ts
        points[f"sensitivity ≥ {target_sensitivity:g}"] = (ts, where)
        out.source = f"highest threshold reaching sensitivity {target_sensitivity:g} on the {where}"
    elif threshold is not None:
        points["user"] = (out.headline, "given (--threshold)")
    if in_sample and ("Youden" in points or target_sensitivity is not None):
        out.warnings.append("thresholds chosen on the validation split are evaluated on that same split "
                            "(in-sample): their sensitivity/specificity are optimistic; evaluate --split test "
                            "or a DATA folder for an unbiased estimate")
    return out

