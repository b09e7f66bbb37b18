"""The evaluation result: what `nfx evaluate` returns and writes as evaluation.json, typed once.

A TypedDict, not a class: it is the JSON as written (api.evaluate returns it, the report, the
console table, MODEL.md, the cautions and the folds evaluation read it by key), so the type names
every key and its type without a second representation to keep in sync. Metric keys and their
labels and formats: nfx.evaluate.metric_table.
"""

from __future__ import annotations

from typing import Any, TypedDict

Interval = list[float]  # [low, high] of a 95 % percentile bootstrap over patients


class OperatingPoint(TypedDict, total=False):
    threshold: float
    thresholds_per_fold: list[float]  # cross-fitted (a --folds parent)
    chosen_on: str
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    f1: float | None
    mcc: float | None


class Evaluation(TypedDict, total=False):
    # what was evaluated
    run: str
    data: str
    split: str | None  # valid | test | None (a DATA folder)
    tta: bool
    arch: str
    weights_source: str
    n_images: int
    n_patients: int
    classes: list[str]
    positive_class: str | None  # two classes only
    # metrics (nfx.evaluate.metric_table), with intervals
    accuracy: float
    balanced_accuracy: float
    roc_auc: float | None
    roc_auc_ci: Interval | None
    pr_auc: float | None
    sensitivity: float | None
    sensitivity_ci: Interval | None
    specificity: float | None
    specificity_ci: Interval | None
    ppv: float | None
    npv: float | None
    f1: float | None
    mcc: float | None
    ece: float | None
    brier: float | None
    confusion_matrix: list[list[int]]
    per_class: dict[str, dict[str, Any]]
    calibration: dict[str, Any]
    n_bootstrap: int
    bootstrap_seed: int
    # decision thresholds
    threshold: float | None
    threshold_source: str
    operating_points: dict[str, OperatingPoint]
    # optional parts
    patient_level: dict[str, Any]  # --per-patient: the metric_table's patient-level keys
    folds: dict[str, Any]  # a --folds parent: per-fold table, mean ± sd
    copies_of_training: list[dict[str, Any]]  # DATA images that copy a training image (excluded)
    warnings: list[str]
    provenance: dict[str, Any]
    plots: dict[str, str]  # name → file under plots/
