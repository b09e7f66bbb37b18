"""report.md and a self-contained report.html, rendered from evaluation.json's content.

No computation here: every number comes from the evaluation dict (what evaluation.json holds),
and the figures are PNG bytes embedded as data: URIs, so report.html is one file that opens
anywhere (no network, no neighbouring files).
"""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING, Any

from nfx.evaluate import metric_table
from nfx.evaluate.metric_table import fmt, threshold_text

if TYPE_CHECKING:
    from nfx.evaluate.result import Evaluation

PLOT_TITLES = {
    "roc": "ROC curve with 95% patient-bootstrap band",
    "pr": "Precision–recall curve",
    "confusion": "Confusion matrix at the headline threshold",
    "reliability": "Reliability diagram (calibration)",
    "training": "Training curves (history.csv)",
}


def op_threshold(o: dict[str, Any]) -> str:
    """An operating point's threshold, or its per-fold thresholds when cross-fitted (--folds)."""
    per = o.get("thresholds_per_fold")
    return "per fold " + " / ".join(f"{t:.3g}" for t in per) if per else threshold_text(o.get("threshold"))


def _sections(ev: Evaluation) -> list[tuple[str, list[str] | list[list[str]], str]]:
    """The report as (title, content, kind) blocks shared by the Markdown and HTML renderers.
    kind: 'list' (bullet lines), 'table' (first row = header), 'text'."""
    prov = ev.get("provenance", {})
    model = prov.get("model", {})
    blocks: list[tuple[str, Any, str]] = []
    splits = prov.get("splits", {})
    split_txt = "; ".join(f"{s}: {c['images']} images, {c['patients']} patients" for s, c in splits.items())
    blocks.append(("Data and model", [
        f"Dataset: {prov.get('dataset', 'n/a')}" + (f" — {split_txt}" if split_txt else ""),
        f"Evaluated: {ev['data']} — {ev['n_images']} images, {ev['n_patients']} patients"
        + (" (horizontal-flip TTA)" if ev.get("tta") else ""),
        f"Model: {ev.get('arch', model.get('arch', 'n/a'))}, weights: {ev.get('weights_source', 'n/a')}",
        f"Preprocessing: {model.get('resize', 'n/a')}, {model.get('input_size', '?')} px, "
        f"mean {model.get('mean')}, std {model.get('std')}",
        f"Training: {prov.get('training', 'n/a')}",
        f"Copies in the training data: {prov.get('copies', 'n/a')}",
        f"Software: nfx {prov.get('nfx_version', '?')}"
        + "".join(f", {k} {v}" for k, v in prov.get("packages", {}).items() if v),
    ], "list"))
    head = [["metric", "value"]] + [list(r) for r in metric_table.rows(ev, metric_table.REPORT)]
    blocks.append(("Headline metrics", head, "table"))
    if ev.get("threshold_source"):
        blocks.append(("", [f"Headline threshold: {threshold_text(ev['threshold'])} ({ev['threshold_source']})."], "text"))
    ops = ev.get("operating_points") or {}
    if ops:
        rows = [["operating point", "threshold", "chosen on", "sensitivity", "specificity", "PPV", "NPV",
                 "F1", "MCC"]]
        for name, o in ops.items():
            rows.append([name, op_threshold(o), o.get("chosen_on", ""), fmt(o["sensitivity"]),
                         fmt(o["specificity"]), fmt(o["ppv"]), fmt(o["npv"]), fmt(o["f1"]),
                         fmt(o["mcc"])])
        blocks.append(("Operating points", rows, "table"))
    folds = ev.get("folds") or {}
    if folds:
        rows = [["fold", "images", "accuracy", "ROC AUC"]]
        rows += [[str(r["fold"]), str(r["n_images"]), fmt(r["accuracy"]), fmt(r["roc_auc"])] for r in folds["per_fold"]]
        sd = lambda k: "" if folds.get(f"{k}_sd") is None else f" ± {folds[f'{k}_sd']:.3f}"  # noqa: E731
        rows.append(["mean ± sd", "", fmt(folds["accuracy_mean"]) + sd("accuracy"), fmt(folds["roc_auc_mean"]) + sd("roc_auc")])
        blocks.append((f"Per fold ({folds['k']} folds; each fold scored by the model that did not train on it)",
                       rows, "table"))
    classes = ev["classes"]
    cm = [["true \\ predicted", *classes]] + [[c, *map(str, r)] for c, r in zip(classes, ev["confusion_matrix"])]
    blocks.append(("Confusion matrix", cm, "table"))
    pc = ev.get("per_class") or {}
    if pc:
        rows = [["class", "support", "precision (PPV)", "recall (sensitivity)", "specificity", "F1",
                 "ROC AUC (one-vs-rest)"]]
        for c, m in pc.items():
            rows.append([c, str(m["support"]), fmt(m["precision"]), fmt(m["recall"]), fmt(m["specificity"]),
                         fmt(m["f1"]), fmt(m["roc_auc"])])
        blocks.append(("Per class", rows, "table"))
    pl = ev.get("patient_level")
    if pl:
        rule = "; positive when any image is" if pl.get("positive_class") else ""
        rows = [[f"metric (one row per patient: mean of image probabilities{rule})", "value"],
                ["patients", str(pl["n_patients"])]] + [list(r) for r in metric_table.patient_rows(pl)]
        blocks.append(("Per patient", rows, "table"))
    notes = list(ev.get("warnings") or [])
    if notes:
        blocks.append(("Warnings", notes, "list"))
    method = []
    if ev.get("roc_auc_ci") is not None or ev.get("sensitivity_ci") is not None:
        method.append(f"95% intervals: percentile bootstrap over patients (all images of a drawn patient "
                      f"together), {ev.get('n_bootstrap')} resamples, seed {ev.get('bootstrap_seed', 0)}.")
    else:
        method.append("No bootstrap interval could be computed (too few patients of each class).")
    cal = ev.get("calibration") or {}
    if cal:
        method.append(f"Calibration: {cal.get('n_bins')} equal-width bins, {cal.get('kind')}.")
    blocks.append(("Method", method, "list"))
    return blocks


def render_markdown(ev: Evaluation) -> str:
    lines = [f"# nfx evaluation — {ev.get('run', '')}", ""]
    for title, content, kind in _sections(ev):
        if title:
            lines += [f"## {title}", ""]
        if kind == "list":
            lines += [f"- {x}" for x in content]
        elif kind == "text":
            lines += list(content)
        else:
            lines.append("| " + " | ".join(content[0]) + " |")
            lines.append("|---" * len(content[0]) + "|")
            lines += ["| " + " | ".join(r) + " |" for r in content[1:]]
        lines.append("")
    plots = ev.get("plots") or {}
    if plots:
        lines += ["## Figures", ""]
        lines += [f"![{PLOT_TITLES.get(k, k)}]({p})" for k, p in plots.items()]
        lines.append("")
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1100px;margin:24px auto;
padding:0 16px;color:#1d2329;line-height:1.45}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;border-bottom:1px solid #dde;padding-bottom:3px;margin-top:1.6em}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}td,th{border:1px solid #ccd;padding:4px 9px;text-align:left}
th{background:#f0f3f7}.warn{background:#fff6e0;border-left:4px solid #e8a500;padding:6px 12px}
.figs{display:flex;flex-wrap:wrap;gap:14px}figure{margin:0;border:1px solid #e3e6ea;padding:6px;background:#fff}
figcaption{font-size:.85em;color:#555;text-align:center}img{display:block;max-width:100%}
.meta{color:#555;font-size:.9em}
"""


def render_html(ev: Evaluation, images: dict[str, bytes]) -> str:
    """Self-contained HTML: `images` maps a plot name to its PNG bytes, embedded inline."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>nfx evaluation — {e(str(ev.get('run', '')))}</title><style>{CSS}</style></head><body>",
           f"<h1>nfx evaluation — {e(str(ev.get('run', '')))}</h1>",
           f'<p class="meta">{e(ev["data"])}</p>']
    for title, content, kind in _sections(ev):
        if title:
            out.append(f"<h2>{e(title)}</h2>")
        if kind == "list":
            cls = ' class="warn"' if title == "Warnings" else ""
            out.append(f"<ul{cls}>" + "".join(f"<li>{e(x)}</li>" for x in content) + "</ul>")
        elif kind == "text":
            out += [f"<p>{e(x)}</p>" for x in content]
        else:
            out.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in content[0]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in content[1:]]
            out.append("</table>")
    if images:
        out.append('<h2>Figures</h2><div class="figs">')
        for name, png in images.items():
            b64 = base64.b64encode(png).decode("ascii")
            title = e(PLOT_TITLES.get(name, name))
            out.append(f'<figure><img alt="{title}" data-plot="{e(name)}" src="data:image/png;base64,{b64}">'
                       f"<figcaption>{title}</figcaption></figure>")
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"

