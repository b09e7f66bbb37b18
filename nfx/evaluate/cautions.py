"""What a reader of an evaluation must be told: the warnings (small samples, wide intervals,
patient leakage, no patient ids, heavy AGC clipping, training from scratch) and the provenance
(data, splits, model, training, versions). Pure: plain values in, plain values out; no files,
no printing (the evaluate workflow reads the run folder and prints)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nfx.data.split import split_counts


def evaluation_warnings(result: dict[str, Any], items: Sequence[tuple[str, str, str | None]],
                        split_rows: Sequence[dict[str, str]], data: str | None, clip_fractions: Sequence[float],
                        agc: float | None, from_scratch: bool) -> list[str]:
    """`items`: the evaluated (path, label, patient); `split_rows`: the run's splits.csv;
    `data`: the evaluated folder when it is not the run's own split; `clip_fractions`: AGC's
    per-epoch clip fractions from history.csv."""
    out: list[str] = []
    n_pat = result["n_patients"]
    if n_pat < 30:
        out.append(f"only {n_pat} patients evaluated: confidence intervals are wide and the point estimates unstable")
    ci = result.get("sensitivity_ci") or result.get("roc_auc_ci")
    if ci and ci[1] - ci[0] > 0.3:
        out.append(f"a 95% interval is {ci[1] - ci[0]:.2f} wide: too few patients to judge the model")
    if result.get("positive_class") and (result.get("roc_auc_ci") is None):
        out.append("no bootstrap interval: too few patients of each class in the evaluated data")
    if all(not pid for _, _, pid in items):
        out.append("no patient ids: every image counts as its own patient; if patients have several "
                   "images, the intervals are too narrow")
    split_of: dict[str, set[str]] = {}
    for r in split_rows:
        if r["patient"]:
            split_of.setdefault(r["patient"], set()).add(r["split"])
    leaked = sorted(p for p, s in split_of.items() if len(s) > 1)
    if leaked:
        out.append(f"patient leakage: {len(leaked)} patient(s) appear in more than one split "
                   f"(e.g. {leaked[0]}); metrics are optimistic")
    if data is not None:
        train_pat = {r["patient"] for r in split_rows if r["split"] == "train" and r["patient"]}
        train_path = {str(Path(r["path"]).resolve()) for r in split_rows if r["split"] == "train"}
        pats = {pid for _, _, pid in items if pid and pid in train_pat}
        files = [p for p, _, _ in items if str(Path(p).resolve()) in train_path]
        if pats or files:
            out.append(f"patient leakage: {len(pats)} patient(s) and {len(files)} file(s) of {data} were "
                       "used for training; metrics on them are optimistic")
    if clip_fractions and max(clip_fractions) > 0.5:
        out.append(f"heavy AGC clipping: up to {max(clip_fractions):.0%} of units clipped per epoch "
                   f"(λ={agc}); training may have been throttled — try a larger --agc")
    if from_scratch:
        out.append("the model was trained from scratch (no pretrained weights)")
    return out


def chosen_on_validation(m: dict[str, Any]) -> bool:
    """Whether a run's metrics.json says its weights are an epoch other than the last, picked by the
    monitor on the validation split (`kept` = best; runs written before `--keep` existed kept the
    best epoch whenever one was recorded)."""
    return ((m.get("kept") or "best") == "best" and m.get("selected_epoch") is not None
            and m.get("selected_epoch") != m.get("epochs_run"))


def selection_warning(metrics: Sequence[dict[str, Any]]) -> str | None:
    """The warning owed when the evaluated weights were chosen on the images being scored: a run's
    (or each fold's) metrics.json with `kept` = best (runs written before `--keep` existed kept the
    best epoch whenever one was recorded). None when every model is its schedule's last epoch."""
    chosen = [m for m in metrics if chosen_on_validation(m)]
    if not chosen:
        return None
    m = chosen[0]
    which = (f"epoch {m['selected_epoch']} of {m.get('epochs_run')}" if len(metrics) == 1
             else f"{len(chosen)} of {len(metrics)} fold models (e.g. epoch {m['selected_epoch']} of {m.get('epochs_run')})")
    return (f"the weights are the best epoch by {m.get('monitor') or 'the monitor'} on this validation data ({which}; "
            "--keep best or --patience): metrics on the images that chose them are optimistic — retrain with "
            "--keep last, or evaluate on a test split")


def provenance(cfg: Any, info: Any, env: dict[str, Any], split_rows: Sequence[dict[str, str]]) -> dict[str, Any]:
    """Where the evaluated model came from. `cfg`: the run's RunConfig; `info`: its ModelInfo;
    `env`: its env.json (may be empty)."""
    from nfx import __version__

    t = cfg.train
    return {
        "dataset": cfg.data.path,
        "splits": split_counts([r["patient"] for r in split_rows], [r["split"] for r in split_rows]),
        "model": {k: info.to_json()[k] for k in ("arch", "weights_source", "input_size", "mean", "std", "resize")},
        "training": (f"{t.schedule or 'fine-tune'} schedule: {t.freeze_epochs} head-only + {t.epochs} full "
                     f"epochs, effective batch {t.effective_batch_size}, lr {t.lr:g} (body lr/{t.body_lr_div:g}), "
                     f"AGC {t.agc if t.agc else 'off'}, precision {env.get('precision', '?')}, "
                     f"device {env.get('device', '?')}"),
        "nfx_version": __version__,
        "trained_with_nfx": env.get("nfx"),
        "packages": {k: (env.get("packages") or {}).get(k) for k in ("torch", "timm", "fastai")},
    }


def copies_line(copies: dict[str, Any] | None) -> str:
    """One sentence on copies of one image in the run's split (split_summary.json "copies")."""
    if not copies or not copies.get("checked"):
        return ("not checked: the split was made by an nfx without copy grouping; if the data holds re-saved "
                "copies of one image, validation may contain copies of training images (optimistic)")
    text = (f"{copies.get('images_in_groups', 0)} images in {copies.get('groups', 0)} group(s) of copies of one "
            "image (other size, encoding, window, rotation or mirror), each group kept in one split")
    if copies.get("across_splits"):
        text += (f"; {copies['across_splits']} group(s) straddle the user's splits (allowed by "
                 "--allow-duplicate-leak): metrics are optimistic")
    if copies.get("label_conflicts"):
        text += f"; {copies['label_conflicts']} group(s) carry different labels (allowed by --allow-duplicate-leak)"
    return text
