"""Patient-level bootstrap confidence intervals (numpy only).

The unit of independence is the patient: each resample draws patients with replacement and
takes all of their images, so two eyes of one patient never count as two independent cases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


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
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        groups.setdefault(p, []).append(i)
    members = [np.asarray(v) for v in groups.values()]
    if not members or n_resamples < 1:
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_resamples):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[k] for k in pick])
        v = stat(idx)
        if v is not None and np.isfinite(v):
            vals.append(v)
    if len(vals) < n_resamples / 2:
        return None
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
