"""The evaluation figures as PNG bytes: ROC (with the bootstrap band), precision-recall,
confusion matrix, reliability diagram, training curves.

Inputs are plain lists/dicts as computed by nfx.evaluate.metrics (no computation here, and no
numpy import). matplotlib is imported inside the functions with the non-interactive Agg backend,
so importing this module costs nothing and no display is ever needed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def roc_png(roc: dict[str, dict[str, list[float]]], auc: float | None, auc_ci: Sequence[float] | None,
            band: dict[str, list[float]] | None) -> bytes:
    """ROC curve(s); the shaded band is the pointwise 95% patient-bootstrap interval of the TPR."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    if band:
        ax.fill_between(band["fpr"], band["tpr_lo"], band["tpr_hi"], color="tab:blue", alpha=0.2,
                        step=None, label="95% CI (patient bootstrap)")
    for name, c in roc.items():
        label = name
        if len(roc) == 1 and auc is not None:
            label = f"{name}: AUC {auc:.3f}" + (f" ({auc_ci[0]:.3f}–{auc_ci[1]:.3f})" if auc_ci else "")
        ax.plot(c["fpr"], c["tpr"], lw=2, label=label, drawstyle="steps-post" if len(roc) == 1 else None)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 − specificity (false-positive rate)",
           ylabel="sensitivity (true-positive rate)", title="ROC" + ("" if len(roc) == 1 else " (one-vs-rest)"))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def pr_png(pr: dict[str, dict[str, Any]]) -> bytes:
    """Precision-recall curve(s) with each class's prevalence as the no-skill line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for name, c in pr.items():
        line = ax.plot(c["recall"], c["precision"], lw=2, drawstyle="steps-post",
                       label=f"{name}: AP {c['ap']:.3f}")[0]
        ax.axhline(c["prevalence"], ls=":", lw=1, color=line.get_color())
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)",
           title="Precision–recall (dotted: prevalence)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_png(cm: list[list[int]], classes: Sequence[str], subtitle: str = "") -> bytes:
    plt = _plt()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.4, 1.1 * k + 1.8))
    ax.imshow(cm, cmap="Blues")
    flat = [v for r in cm for v in r]
    lo, hi = (min(flat), max(flat)) if flat else (0, 0)
    for i in range(k):
        for j in range(k):
            v = cm[i][j]
            ax.text(j, i, str(v), ha="center", va="center", fontsize=12,
                    color="white" if hi > lo and (v - lo) / (hi - lo) > 0.5 else "black")
    ax.set_xticks(range(k), classes, rotation=30, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix" + (f"\n{subtitle}" if subtitle else ""))
    return _png(fig)


def reliability_png(cal: dict[str, Any]) -> bytes:
    """Reliability diagram: observed vs mean predicted per bin (marker area ∝ images), with the
    histogram of predictions below."""
    plt = _plt()
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(4.6, 5.2), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    bins = [b for b in cal["bins"] if b["n"]]
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    if bins:
        total = sum(b["n"] for b in bins)
        ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], "-", color="tab:orange")
        ax.scatter([b["mean_predicted"] for b in bins], [b["observed"] for b in bins],
                   s=[20 + 300 * b["n"] / total for b in bins], color="tab:orange", zorder=3,
                   label=f"ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed", title=f"Reliability ({cal['kind']})")
    ax.legend(loc="upper left", fontsize=8, markerscale=0.5)
    ax.grid(alpha=0.3)
    axh.bar([(b["lo"] + b["hi"]) / 2 for b in cal["bins"]], [b["n"] for b in cal["bins"]],
            width=[b["hi"] - b["lo"] for b in cal["bins"]], color="tab:grey", edgecolor="white")
    axh.set(xlabel="predicted probability", ylabel="images")
    return _png(fig)


def training_png(history: list[dict[str, str]]) -> bytes:
    """history.csv as four panels: losses, validation metrics, learning rate, AGC clip fraction.
    Empty cells (e.g. no AGC while the body is frozen) are gaps; phases are shaded."""
    plt = _plt()

    def col(name):
        out = []
        for r in history:
            try:
                out.append(float(r.get(name) or "nan"))
            except ValueError:
                out.append(float("nan"))
        return out

    ep = col("epoch")
    fig, axes = plt.subplots(2, 2, figsize=(8.4, 5.6), sharex=True)
    panels = [
        (axes[0][0], "loss", [("train_loss", "train"), ("valid_loss", "valid")]),
        (axes[0][1], "validation metric", [("valid_accuracy", "accuracy"), ("valid_roc_auc", "ROC AUC")]),
        (axes[1][0], "learning rate (end of epoch)", [("lr", "lr")]),
        (axes[1][1], "AGC: fraction of units clipped", [("agc_clip_fraction", "clip fraction")]),
    ]
    phases = [r.get("phase", "") for r in history]
    for ax, title, series in panels:
        for key, label in series:
            ax.plot(ep, col(key), marker="o", ms=4, label=label)
        start = 0
        for i in range(1, len(phases) + 1):  # shade the frozen (head-only) epochs
            if i == len(phases) or phases[i] != phases[start]:
                if phases[start] == "frozen":
                    ax.axvspan(ep[start] - 0.5, ep[i - 1] + 0.5, color="grey", alpha=0.12)
                start = i
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    axes[1][1].xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axes[1][1].set_ylim(0, 1.02)
    for ax in axes[1]:
        ax.set_xlabel("epoch (grey: body frozen)")
    fig.tight_layout()
    return _png(fig)


def lr_find_png(lrs: Sequence[float], losses: Sequence[float], lr: float) -> bytes:
    """The lr range test (nfx.train.lr_find): smoothed training loss against lr, log scale, the
    chosen lr marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    ax.plot(lrs, losses)
    ax.axvline(lr, color="tab:red", ls="--", label=f"valley: lr {lr:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.set_title("lr range test (--lr-find)")
    ax.legend()
    return _png(fig)
