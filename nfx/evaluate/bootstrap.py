"""Patient-level bootstrap confidence intervals (numpy only).

The unit of independence is the patient: each resample draws patients with replacement and
takes all of their images, so two eyes of one patient never count as two independent cases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np


def patient_resamples(patients: Sequence[str], n_resamples: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Image indices of `n_resamples` bootstrap resamples: each draws as many patients as there
    are, with replacement, and takes all images of every patient drawn."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        groups.setdefault(p, []).append(i)
    members = [np.asarray(v) for v in groups.values()]
    if not members:
        return
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        pick = rng.integers(0, len(members), len(members))
        yield np.concatenate([members[k] for k in pick])


def patient_bootstrap(
    stat: Callable[[np.ndarray], float | None],
    patients: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float] | None:
    """Percentile CI of `stat(indices)` over patient resamples. Resamples where the statistic is
    undefined (e.g. only one class drawn) are skipped; None when fewer than half are defined
    (or when there are no patients or no resamples)."""
    if not len(patients) or n_resamples < 1:
        return None
    vals = []
    for idx in patient_resamples(patients, n_resamples, seed):
        v = stat(idx)
        if v is not None and np.isfinite(v):
            vals.append(v)
    if len(vals) < n_resamples / 2:
        return None
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def patient_bootstrap_many(
    stat: Callable[[np.ndarray], dict[str, Any]],
    patients: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Several statistics over the same patient resamples (one pass, so they share the draws).
    `stat(indices)` returns {name: float | 1-D array | None}; missing/None/NaN values are skipped
    per name. Floats give (lo, hi); arrays give a pointwise (lo_list, hi_list) band. A name
    defined in fewer than half of the resamples gives None, as in `patient_bootstrap`."""
    vals: dict[str, list[Any]] = {}
    n = 0
    for idx in patient_resamples(patients, n_resamples, seed):
        n += 1
        for k, v in stat(idx).items():
            if v is None:
                continue
            a = np.asarray(v, dtype=np.float64)
            if np.isfinite(a).all():
                vals.setdefault(k, []).append(a)
    out: dict[str, Any] = {}
    for k, vs in vals.items():
        if n == 0 or len(vs) < n_resamples / 2:
            out[k] = None
            continue
        lo, hi = np.quantile(np.stack(vs), [alpha / 2, 1 - alpha / 2], axis=0)
        out[k] = (float(lo), float(hi)) if lo.ndim == 0 else (lo.tolist(), hi.tolist())
    return out
