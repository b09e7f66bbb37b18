"""MODEL.md, the model card `nfx export` writes beside the exported model. Pure: plain values
in (model.json, config, metrics.json, evaluation.json, the ONNX check), Markdown out.

Contract: every number on the card is read from the run's own files — nothing is recomputed
or invented here; a run that was never evaluated says so and names the command that fills the
metrics in. Patient identifiers never appear (only counts)."""

from __future__ import annotations

from typing import Any

from nfx.evaluate import metric_table
from nfx.evaluate.metric_table import fmt

INTENDED_USE = (
    "Research use: a starting point for studying {task} on images like the training data "
    "(same modality, acquisition and preprocessing). Not a medical device; not validated for "
    "clinical decisions. Any clinical use needs a prospective evaluation on the target "
    "population, sites and scanners."
)
LIMITS = [
    "Trained and validated on one dataset ({n_train} training / {n_valid} validation images); "
    "performance on other sites, scanners, populations or preprocessing is unknown.",
    "Inputs are resized to {size} px ({resize}) and intensity-normalised as recorded in the "
    "ONNX metadata; images prepared differently are out of distribution.",
    "{threshold}",
    "Probabilities are only as calibrated as the calibration section shows (ECE / Brier).",
]


def _agc_card(mode: str) -> str:
    from nfx.variants import AGC_MODES

    return AGC_MODES[mode].card if mode in AGC_MODES else mode


def render(info: dict[str, Any], cfg: dict[str, Any], metrics: dict[str, Any], evaluation: dict[str, Any] | None,
           export: dict[str, Any]) -> str:
    """`info`: model.json; `cfg`: config.json; `metrics`: metrics.json (training's last/best
    epoch); `evaluation`: evaluation.json or None; `export`: the ONNX check (onnx, opset,
    max_abs_diff, tolerance)."""
    classes = info["classes"]
    task = " vs ".join(classes) + " classification"
    splits = metrics.get("splits") or {}
    n_train = splits.get("train", {}).get("images", "?")
    n_valid = splits.get("valid", {}).get("images", "?")
    t = cfg.get("train", {})
    lines = [f"# Model card: {cfg.get('name') or 'nfx model'}", ""]
    k = t.get("folds")
    if k:
        lines += [f"**An ensemble of {k} fold models** (k-fold cross-validation, folds grouped by patient and copy "
                  f"group): the output is the mean of the {k} models' probabilities. Its quality is estimated by the "
                  "out-of-fold metrics below (each image scored by the model that did not train on it).", ""]
    lines += ["## Model", "",
              f"- Architecture: `{info['arch']}` (timm), {len(classes)} classes: {', '.join(classes)}",
              f"- Starting point: {info.get('weights_source', '?')}" + _scratch_note(info),
              f"- Input: {info['input_size']} px, resize policy `{info.get('resize', '?')}`, "
              f"mean {info.get('mean')}, std {info.get('std')}"
              + (f", DICOM frame {info['frame']} of multi-frame files (single-frame files: their only frame)"
                 if info.get("frame") is not None else "")
              + f", grey DICOMs without VOI: `{info.get('voi_fallback', 'stored')}` (docs/VOI_FALLBACK.md)",
              f"- Training: {t.get('schedule') or 'fine-tune'} schedule, {t.get('freeze_epochs')} head-only + "
              f"{t.get('epochs')} full epochs, effective batch {metrics.get('effective_batch_size', '?')}, "
              + _lr_card(t, metrics)
              + f", AGC {t.get('agc') if t.get('agc') else 'off'} ({_agc_card(metrics.get('agc_mode', 'batch'))}), "
              + _regularisation(cfg)
              + ("BatchNorm statistics frozen (eval mode, `--bn frozen`), " if t.get("bn") == "frozen" else "")
              + (f"micro-batch 1 with train-mode BatchNorm — {_bn_at_bs1_note()}, "
                 if metrics.get("batchnorm_layers") and t.get("bs") == 1 and t.get("bn", "train") == "train" else "")
              + f"precision {metrics.get('precision', '?')}, device {metrics.get('device', '?')}, seed {t.get('seed')}",
              f"- Exported: `{export['onnx']}` (ONNX opset {export.get('opset', '?')}); ONNX Runtime vs torch "
              f"max |Δ| {export['max_abs_diff']:.2e} (tolerance {export.get('tolerance', '?')})", ""]
    lines += ["## Data provenance", "",
              f"- Dataset: `{cfg.get('data', {}).get('path', '?')}`",
              "- Splits (patient-level; a patient's images are in one split only): "
              + ", ".join(f"{k} {v.get('images')} images / {v.get('patients')} patients" for k, v in splits.items()),
              f"- Augmentation: {cfg.get('data', {}).get('aug', '?')}"]
    if evaluation is not None and evaluation.get("provenance", {}).get("copies"):
        lines.append(f"- Copies of one image: {evaluation['provenance']['copies']}")
    lines.append("")
    lines += ["## Metrics", ""]
    if evaluation is None:
        lines += ["Not evaluated yet: run `nfx evaluate` on this run folder, then `nfx export` again to fill in "
                  "metrics with confidence intervals. Training's own validation figures (epoch "
                  f"{metrics.get('selected_epoch')}, kept: {metrics.get('kept') or 'best'}): accuracy {fmt(metrics.get('valid_accuracy'))}, "
                  f"ROC AUC {fmt(metrics.get('valid_roc_auc'))}.", ""]
    else:
        ev = evaluation
        lines += [f"On the {ev.get('split', 'valid')} split ({ev['n_images']} images, {ev['n_patients']} patients); "
                  f"intervals: patient-level bootstrap, {ev.get('n_bootstrap')} resamples.", "",
                  "| metric | value |", "|---|---|",
                  *(f"| {k} | {v} |" for k, v in metric_table.rows(ev, metric_table.CARD)), ""]
        if ev.get("positive_class") is not None:
            lines += [f"Decision threshold: p({ev['positive_class']}) ≥ {fmt(ev.get('threshold'))} "
                      f"({ev.get('threshold_source', 'default')}).", ""]
        if ev.get("warnings"):
            lines += ["Cautions from the evaluation:", ""] + [f"- {w}" for w in ev["warnings"]] + [""]
    lines += ["## Intended use", "", INTENDED_USE.format(task=task), ""]
    source = (evaluation or {}).get("threshold_source", "default")
    threshold = ("The decision threshold is the untuned default; choose one for the intended use "
                 "(`nfx evaluate --target-sensitivity 0.9`) on data from the site where the model is used."
                 if source == "default" else
                 "The threshold was chosen on the evaluated data; re-choose it on data from the site where "
                 "the model is used.")
    lines += ["## Limits", ""] + [
        "- " + s.format(n_train=n_train, n_valid=n_valid, size=info["input_size"], resize=info.get("resize", "?"),
                        threshold=threshold)
        for s in LIMITS] + [""]
    lines += ["Generated by `nfx export` from the run folder's files (model.json, config.json, metrics.json, "
              "evaluation.json).", ""]
    return "\n".join(lines)


def _lr_card(t: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The peak lr; with --lr-find the one the range test found (each fold model's, for a --folds parent)."""
    if not t.get("lr_find"):
        return f"lr {t.get('lr')}"
    per_fold = [f.get("lr_found") for f in metrics.get("per_fold") or []]
    if per_fold:
        return "lr found by an lr range test for each fold model (`--lr-find`): " + ", ".join(
            f"{x:.3g}" if isinstance(x, (int, float)) else "?" for x in per_fold)
    return f"lr {t.get('lr')} (found by an lr range test, `--lr-find`)"


def _regularisation(cfg: dict[str, Any]) -> str:
    """The regularisers a run used (none by default), as the card's training line lists them."""
    t, m = cfg.get("train", {}), cfg.get("model", {})
    parts = [f"{label} {v}" for label, v in (("MixUp α", t.get("mixup")), ("CutMix α", t.get("cutmix")),
                                              ("label smoothing", t.get("label_smoothing")),
                                              ("drop-path", m.get("drop_path")), ("dropout", m.get("dropout")),
                                              ("EMA", t.get("ema"))) if v]
    wd = t.get("wd")
    return _optimizer_card(t.get("optimizer", "adam")) + ", " + (f"weight decay {wd}, " if wd is not None else "") + (f"{', '.join(parts)}, " if parts else "")


def _optimizer_card(name: str) -> str:
    from nfx.variants import OPTIMIZERS

    return OPTIMIZERS[name].card if name in OPTIMIZERS else name


def _bn_at_bs1_note() -> str:
    from nfx.records import BN_AT_BS1_DROP, BN_AT_BS1_NOTE

    return BN_AT_BS1_NOTE.format(drop=BN_AT_BS1_DROP)


def _scratch_note(info: dict[str, Any]) -> str:
    from nfx.models.factory import is_nf
    from nfx.records import NF_FROM_SCRATCH_NOTE, SCRATCH

    if info.get("weights_source") == SCRATCH and is_nf(str(info.get("arch", ""))):
        return f" — {NF_FROM_SCRATCH_NOTE}"
    return ""
