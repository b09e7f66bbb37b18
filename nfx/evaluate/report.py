"""report.md rendering from evaluation.json's content (no computation here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfx import __version__


def _f(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1%}" if pct else f"{v:.3f}"


def _ci(v: Any, pct: bool = False) -> str:
    if not v:
        return ""
    return f" (95% CI {_f(v[0], pct)}–{_f(v[1], pct)})"


def render_markdown(run_dir: Path, ev: dict[str, Any], info: dict[str, Any], warnings: list[str]) -> str:
    lines = [
        f"# nfx evaluation — {Path(run_dir).name}",
        "",
        f"- Data: {ev['data']} — {ev['n_images']} images, {ev['n_patients']} patients",
        f"- Model: `{info['arch']}`, weights: **{info['weights_source']}**",
        f"- Preprocessing: {info.get('resize', '')}, {info['input_size']} px, mean {info['mean']}, std {info['std']}",
        f"- nfx {__version__}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy | {_f(ev['accuracy'])} |",
        f"| balanced accuracy | {_f(ev['balanced_accuracy'])} |",
        f"| ROC AUC | {_f(ev['roc_auc'])}{_ci(ev.get('roc_auc_ci'))} |",
    ]
    if ev.get("positive_class"):
        lines += [
            f"| sensitivity ({ev['positive_class']}, threshold {ev['threshold']}) | "
            f"{_f(ev['sensitivity'], True)}{_ci(ev.get('sensitivity_ci'), True)} |",
            f"| specificity | {_f(ev['specificity'], True)}{_ci(ev.get('specificity_ci'), True)} |",
        ]
    lines += ["", "Confusion matrix (rows = true, columns = predicted):", ""]
    classes = ev["classes"]
    lines.append("| | " + " | ".join(classes) + " |")
    lines.append("|---" * (len(classes) + 1) + "|")
    for c, row in zip(classes, ev["confusion_matrix"]):
        lines.append(f"| **{c}** | " + " | ".join(str(x) for x in row) + " |")
    notes = list(warnings)
    if ev["n_patients"] < 50:
        notes.append(f"only {ev['n_patients']} patients evaluated: confidence intervals are wide")
    if info["weights_source"] == "trained from scratch":
        notes.append("the model was trained from scratch (no pretrained weights)")
    if notes:
        lines += ["", "## Warnings", ""] + [f"- {n}" for n in notes]
    if ev.get("roc_auc_ci"):
        lines += ["", f"Intervals: percentile bootstrap over patients, {ev.get('n_bootstrap')} resamples, seed 0."]
    return "\n".join(lines) + "\n"
