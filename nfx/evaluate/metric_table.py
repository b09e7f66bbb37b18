"""The one table of evaluation metrics: key, label, format, interval, where it is shown.

The report (Markdown / HTML), the console table of `nfx evaluate` and MODEL.md all render their
metric rows from `METRICS` with `rows()`, and the per-patient table takes the entries marked
`patient_level`. Adding a metric = one entry here (plus computing it in nfx/evaluate/metrics.py);
every place that shows metrics picks it up with one label and one format.

Format: every metric as a proportion with three decimals (sensitivity 0.912, not 91.2 %), the same in
the report, the console and MODEL.md; `pct=True` shows a metric as a percentage everywhere instead.
Intervals: "(95% CI lo–hi)" in the metric's own format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nfx.evaluate.result import Evaluation

REPORT, CONSOLE, CARD = "report", "console", "card"
EVERYWHERE = frozenset({REPORT, CONSOLE, CARD})


@dataclass(frozen=True)
class Metric:
    key: str  # key of the evaluation result (evaluation.json)
    label: str  # how people read it; may use {positive_class} and {threshold}
    pct: bool = False  # shown as a percentage
    ci: str | None = None  # key of its 95 % interval in the evaluation result
    binary: bool = False  # only when there is a positive class (two classes)
    multiclass_label: str | None = None  # its label without a positive class (e.g. macro averages)
    patient_level: bool = False  # also a row of the per-patient table
    where: frozenset[str] = EVERYWHERE


METRICS: list[Metric] = [
    Metric("accuracy", "accuracy", patient_level=True),
    Metric("balanced_accuracy", "balanced accuracy"),
    Metric("roc_auc", "ROC AUC", ci="roc_auc_ci", multiclass_label="ROC AUC (one-vs-rest macro)", patient_level=True),
    Metric("pr_auc", "PR AUC (average precision)", where=frozenset({REPORT})),
    Metric("sensitivity", "sensitivity ({positive_class}, threshold {threshold})", ci="sensitivity_ci",
           binary=True, patient_level=True),
    Metric("specificity", "specificity", ci="specificity_ci", binary=True, patient_level=True),
    Metric("ppv", "PPV", binary=True, where=frozenset({REPORT, CARD})),
    Metric("npv", "NPV", binary=True, where=frozenset({REPORT, CARD})),
    Metric("f1", "F1", multiclass_label="F1 (macro)", where=frozenset({REPORT})),
    Metric("mcc", "MCC", where=frozenset({REPORT})),
    Metric("ece", "ECE (calibration error)", where=EVERYWHERE),
    Metric("brier", "Brier score", where=EVERYWHERE),
]


def register(metric: Metric, after: str | None = None) -> None:
    """Add a metric to every table (after the metric `after`, else at the end); replaces one of the same key."""
    keys = [m.key for m in METRICS]
    if metric.key in keys:
        METRICS[keys.index(metric.key)] = metric
        return
    METRICS.insert(keys.index(after) + 1 if after in keys else len(METRICS), metric)


def fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.1%}" if pct else f"{v:.3f}"


def fmt_ci(v: Any, pct: bool = False) -> str:
    return f" (95% CI {fmt(v[0], pct)}–{fmt(v[1], pct)})" if v else ""


def threshold_text(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def value(m: Metric, ev: Evaluation) -> str:
    """The metric's value with its interval, as every table shows it."""
    return fmt(ev.get(m.key), m.pct) + (fmt_ci(ev.get(m.ci), m.pct) if m.ci else "")


def label(m: Metric, ev: Evaluation) -> str:
    binary = ev.get("positive_class") is not None
    text = m.label if binary or not m.multiclass_label else m.multiclass_label
    if "{" in text:
        text = text.format(positive_class=ev.get("positive_class"), threshold=threshold_text(ev.get("threshold")))
    return text


def _applicable(ev: dict[str, Any]) -> list[Metric]:
    """The metrics `ev` holds; binary-only ones need a positive class."""
    binary = ev.get("positive_class") is not None
    return [m for m in METRICS if (binary or not m.binary) and m.key in ev]


def rows(ev: Evaluation, where: str) -> list[tuple[str, str]]:
    """(label, value) of each metric shown `where` that applies to `ev`."""
    return [(label(m, ev), value(m, ev)) for m in _applicable(ev) if where in m.where]


def patient_rows(pl: dict[str, Any]) -> list[tuple[str, str]]:
    """The per-patient table's metric rows (labels without the image-level threshold)."""
    return [(m.label.split(" (")[0], value(m, pl)) for m in _applicable(pl) if m.patient_level]
