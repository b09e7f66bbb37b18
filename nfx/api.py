"""The verbs as plain functions: finetune, evaluate, export, predict.

The CLI, notebooks and tests call these. Heavy libraries are imported inside the functions.
Each takes a Printer (nfx.console) for everything the user sees and returns a result object.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nfx import runs
from nfx.config import RunConfig
from nfx.console import Printer
from nfx.errors import ConfigError, DataError, RunError
from nfx.records import MODEL_INFO, InputSpec, ModelInfo
from nfx.workflows.compare import CompareConfig, compare  # noqa: E402,F401  (re-exported verb)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# finetune
# --------------------------------------------------------------------------------------------
def finetune(cfg: RunConfig, printer: Printer | None = None) -> RunResult:
    printer = printer or Printer()
    t_start = time.time()
    disc = _discover(cfg, printer)
    pat = f"{disc.n_patients} patients" if disc.n_patients else "no patient ids"
    printer.info(f"found {len(disc.samples)} images in {len(disc.classes)} classes ({', '.join(disc.classes)}), {pat}")

    import torch  # after cheap checks: a bad folder fails in well under a second

    from nfx.models.factory import create_model
    from nfx.train.learner import resolve_device, resolve_precision

    notes: list[str] = []
    torch.manual_seed(cfg.train.seed)  # the new head's (or a from-scratch model's) initialisation
    model, prep, weights_source = create_model(
        cfg.model.arch, len(disc.classes), cfg.model.pretrained, cfg.model.weights, notes
    )
    for n in notes:
        printer.note(n)
    arch = model.pretrained_cfg.get("architecture", cfg.model.arch)
    if weights_source == "trained from scratch":
        printer.warn(f"{arch}: no pretrained weights (--no-pretrained); this run trains from scratch")
    device = resolve_device()
    precision = resolve_precision(cfg.train.precision, device, printer.warn)
    size = cfg.data.size or prep.train_size
    from nfx.config import resolve_schedule

    train_cfg, schedule_line = resolve_schedule(cfg.train, from_scratch=weights_source == "trained from scratch")
    printer.info(schedule_line)
    cfg = replace(
        cfg,
        data=replace(cfg.data, size=size, path=str(Path(cfg.data.path))),
        model=replace(cfg.model, arch=arch),
        train=train_cfg,
    )
    run_dir = runs.new_run_dir(cfg.out, cfg.name, arch)
    cfg = replace(cfg, name=run_dir.name)
    cfg.save(run_dir / runs.CONFIG)
    env = runs.environment()
    env["precision"] = precision
    from nfx.data.augment import describe

    env["augmentation"] = describe(cfg.data.aug, cfg.data.flip)  # the preset's resolved transforms
    runs.atomic_write_json(run_dir / runs.ENV, env)

    samples, entries = _ingest(cfg, disc, run_dir, printer)
    split_of = _split(cfg, samples, printer, run_dir)
    runs.atomic_write_csv(
        run_dir / runs.SPLITS,
        [{"path": s.path, "label": s.label, "patient": s.patient or "", "split": split_of[i]}
         for i, s in enumerate(samples)],
    )
    counts = _split_counts([s.patient for s in samples], split_of)
    for sp, c in counts.items():
        printer.info(f"  {sp}: {c['images']} images, {c['patients']} patients")

    cls_idx = {c: i for i, c in enumerate(disc.classes)}
    sel = {sp: [i for i in range(len(samples)) if split_of[i] == sp] for sp in ("train", "valid")}
    if not sel["valid"]:
        raise DataError(f"{cfg.data.path}: the validation split is empty; add images or raise --valid-pct")
    if len(sel["train"]) < cfg.train.bs:
        raise DataError(
            f"{cfg.data.path}: the training split has {len(sel['train'])} images, fewer than --bs "
            f"{cfg.train.bs}; lower --bs"
        )
    model_info = ModelInfo(arch=arch, classes=tuple(disc.classes), weights_source=weights_source,
                           input=InputSpec(size=size, mean=tuple(prep.mean), std=tuple(prep.std),
                                           resize=cfg.data.resize, frame=cfg.data.frame))
    model_info.write(run_dir)

    train = ([entries[i] for i in sel["train"]], [cls_idx[samples[i].label] for i in sel["train"]])
    valid = ([entries[i] for i in sel["valid"]], [cls_idx[samples[i].label] for i in sel["valid"]])
    return _train(cfg, model, prep, model_info, train, valid, device, precision, run_dir, printer,
                  counts, t_start, notes)


def _train(cfg, model, prep, model_info, train, valid, device, precision, run_dir, printer, counts,
           t_start, notes, resume=None) -> RunResult:
    from nfx.train.fit import fit

    history, final = fit(
        cfg, model, prep, train=train, valid=valid, num_classes=model_info.num_classes,
        device=device, precision=precision, run_dir=run_dir, printer=printer, resume=resume,
    )
    metrics = {
        **final,
        "arch": model_info.arch,
        "weights_source": model_info.weights_source,
        "precision": precision,
        "device": str(device),
        "effective_batch_size": cfg.train.effective_batch_size,
        "agc": cfg.train.agc,
        "agc_mode": cfg.train.agc_mode,
        "splits": counts,
        "seconds": round(time.time() - t_start, 1),
    }
    import torch

    if device.type == "cuda":
        metrics["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    runs.atomic_write_json(run_dir / runs.METRICS, metrics)
    return RunResult(run_dir, metrics, history, notes)


def resume(run_dir: str | Path, printer: Printer | None = None) -> RunResult:
    """Continue a run from its last completed epoch (model, optimizer, EMA, history, best-so-far;
    RNG is re-seeded per epoch, so the continuation replays the uninterrupted run)."""
    printer = printer or Printer()
    t_start = time.time()
    run_dir = runs.require_run(Path(run_dir), runs.SPLITS, MODEL_INFO)
    cfg = RunConfig.load(run_dir / runs.CONFIG)
    info = ModelInfo.read(run_dir)
    from nfx.train.checkpoint import load_last

    ckpt = load_last(run_dir)
    if ckpt is None:
        raise RunError(f"{run_dir}: no checkpoint to resume from (it stopped before finishing an epoch); "
                       f"start it again with `nfx finetune --config {run_dir / runs.CONFIG}`")
    if not cfg.train.resolved:  # a run from before the schedule was recorded: its values are explicit
        from nfx.config import resolve_schedule

        cfg = replace(cfg, train=resolve_schedule(cfg.train, info.from_scratch)[0])
    total = cfg.train.freeze_epochs + cfg.train.epochs
    if int(ckpt["state"].get("epochs_done", 0)) >= total or ckpt["state"].get("early_stopped_at"):
        if (run_dir / runs.WEIGHTS).is_file() and (run_dir / runs.METRICS).is_file():
            raise RunError(f"{run_dir}: already complete ({total} epochs); nothing to resume")
    import torch  # noqa: F401

    from nfx.data.cache import ImageCache
    from nfx.models.factory import Preprocessing, build_for_inference
    from nfx.train.learner import resolve_device, resolve_precision

    rows = runs.read_csv(run_dir / runs.SPLITS)
    spec = info.input  # the preprocessing the model was trained with, as recorded
    cache = ImageCache(cfg.data.cache_dir, spec.size, spec.frame, resize=spec.resize)
    paths = [r["path"] for r in rows]
    with printer.progress(len(paths), "checking cache") as bar:
        entries, bad = cache.fill(paths, on_done=lambda: bar.advance(1))
    if bad:
        raise DataError(f"{bad[0][0]}: {bad[0][1]} (a file of this run changed or vanished; "
                        "restore the data folder to resume)")
    classes = list(info.classes)
    pick = {sp: [i for i, r in enumerate(rows) if r["split"] == sp] for sp in ("train", "valid")}
    train = ([entries[i] for i in pick["train"]], [classes.index(rows[i]["label"]) for i in pick["train"]])
    valid = ([entries[i] for i in pick["valid"]], [classes.index(rows[i]["label"]) for i in pick["valid"]])
    prep = Preprocessing(spec.size, spec.size, spec.mean, spec.std, "")
    model = build_for_inference(info.arch, info.num_classes)
    device = resolve_device()
    precision = resolve_precision(cfg.train.precision, device, printer.warn)
    counts = _split_counts([r["patient"] for r in rows], [r["split"] for r in rows])
    return _train(cfg, model, prep, info, train, valid, device, precision, run_dir, printer, counts,
                  t_start, [], resume=ckpt)


def _discover(cfg: RunConfig, printer: Printer):
    """Files → samples (headers only, in parallel, with progress)."""
    from nfx.data.discover import discover

    with printer.progress(None, "scanning files") as bar:
        return discover(cfg.data.path, cfg.data.patient_regex, cfg.data.labels, on_progress=bar.advance)


def _ingest(cfg: RunConfig, disc, run_dir: Path, printer: Printer):
    """Decode every file into the cache (the bad-file scan and the cache fill are one pass).

    Every unusable file — unsupported type, unreadable header (from discovery), decode failure,
    multi-frame without --frame — is written to bad_files.csv with its reason; then either one
    error pointing at that file, or (--skip-bad) a warning and the rest goes on.
    """
    from nfx.data.cache import ImageCache

    cache = ImageCache(cfg.data.cache_dir, cfg.data.size, cfg.data.frame, resize=cfg.data.resize)
    paths = [s.path for s in disc.samples]
    with printer.progress(len(paths), "decoding + caching") as bar:
        entries, bad = cache.fill(paths, workers=cfg.data.num_workers or None, on_done=lambda: bar.advance(1))
    st = cache.last_stats
    if st.get("hits"):
        printer.info(f"cache: {st['hits']} of {len(paths)} images reused, {st['decoded']} decoded ({cache.dir})")
    bad = sorted(disc.bad + bad)
    bad_csv = run_dir / runs.BAD_FILES
    if bad:
        runs.atomic_write_csv(bad_csv, [{"path": p, "reason": r} for p, r in bad], fieldnames=["path", "reason"])
        if not cfg.data.skip_bad:
            first = f"{bad[0][0]}: {bad[0][1]}"
            raise DataError(
                f"{len(bad)} file(s) could not be used (listed in {bad_csv}; first: {first}); "
                "fix or remove them, or pass --skip-bad"
            )
        printer.warn(f"skipping {len(bad)} unusable file(s), listed with reasons in {bad_csv}")
    bad_paths = {p for p, _ in bad}
    keep = [i for i, s in enumerate(disc.samples) if s.path not in bad_paths]
    samples = [disc.samples[i] for i in keep]
    left = {s.label for s in samples}
    if len(left) < 2:
        raise DataError(f"{cfg.data.path}: after skipping unusable files fewer than two classes remain "
                        f"(see {bad_csv}); fix those files")
    empty = sorted(set(disc.classes) - left)
    if empty:
        printer.warn(f"class(es) {empty} have no usable images left after skipping bad files")
    return samples, [entries[i] for i in keep]


SPLIT_SUMMARY = "split_summary.json"


def _split(cfg: RunConfig, samples, printer: Printer, run_dir: Path | None = None) -> list[str]:
    """train / valid / test per sample: user splits kept (leak-checked), the rest grouped by
    patient and stratified by label. Writes split_summary.json (patients per split, leaks)."""
    from nfx.data.split import assign_splits, group_keys, split_summary

    patients = [s.patient for s in samples]
    groups = group_keys([s.path for s in samples], patients)
    n_with = sum(1 for p in patients if p)
    if n_with == 0:
        printer.warn(
            "no patient id found (no CSV patient column, no DICOM PatientID, no --patient-regex); splitting "
            "per image. If patients have several images, validation metrics will be optimistic"
        )
    elif n_with < len(samples):
        printer.warn(f"{len(samples) - n_with} of {len(samples)} images have no patient id; "
                     "each of those is its own group in the split")
    user = [s.split for s in samples]
    splits, leaks = assign_splits([s.label for s in samples], groups, user, cfg.data.valid_pct,
                                  cfg.train.seed, allow_leak=cfg.data.allow_patient_leak)
    if leaks:
        shown = ", ".join(leaks[:5]) + (" …" if len(leaks) > 5 else "")
        printer.warn(f"{len(leaks)} patient(s) appear in more than one split ({shown}); allowed by "
                     "--allow-patient-leak, recorded in split_summary.json: metrics will be optimistic")
    if run_dir is not None:
        from collections import Counter

        summary = {
            "source": "user" if any(user) else "grouped_stratified",
            "seed": cfg.train.seed,
            "valid_pct": cfg.data.valid_pct,
            "patient_id_source": dict(Counter(getattr(s, "patient_source", None) or "none" for s in samples)),
            "splits": split_summary([s.label for s in samples], patients, splits),
            "patient_leaks": leaks,
            "allow_patient_leak": cfg.data.allow_patient_leak,
        }
        runs.atomic_write_json(run_dir / SPLIT_SUMMARY, summary)
    return splits


def _split_counts(patients, splits) -> dict[str, dict[str, int]]:
    """Images and patients (with an id) per split, in train / valid / test order. One helper for
    a fresh run (samples), a resumed run and the evaluation report (rows of splits.csv)."""
    out: dict[str, dict[str, int]] = {}
    order = ["train", "valid", "test"] + sorted(set(splits) - {"train", "valid", "test"})
    for sp in order:
        idx = [i for i, s in enumerate(splits) if s == sp]
        if idx:
            out[sp] = {"images": len(idx), "patients": len({patients[i] for i in idx if patients[i]})}
    return out


# --------------------------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------------------------
def inspect(data: str | Path, printer: Printer | None = None, patient_regex: str | None = None,
            labels: str | Path | None = None, frame: int | None = None,
            workers: int | None = None) -> dict[str, Any]:
    """Describe a data folder without training: classes × images × patients, modalities,
    photometric interpretations, bit depths, sizes, bad files, duplicates, imbalance.
    Returns the report dict (stable keys, see nfx.data.inspect)."""
    printer = printer or Printer()
    from nfx.data.inspect import inspect_data

    with printer.progress(None, "decoding every file") as bar:
        return inspect_data(data, patient_regex, labels, frame, workers, on_decode=bar.advance)


# --------------------------------------------------------------------------------------------
# loading a trained run (no fastai)
# --------------------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    run_dir: Path
    cfg: RunConfig
    info: ModelInfo
    model: Any


def load_run(run_dir: str | Path) -> LoadedRun:
    run_dir = runs.require_run(Path(run_dir), runs.WEIGHTS, MODEL_INFO)
    cfg = RunConfig.load(run_dir / runs.CONFIG)
    info = ModelInfo.read(run_dir)
    from safetensors.torch import load_file

    from nfx.models.factory import build_for_inference

    model = build_for_inference(info.arch, info.num_classes)
    try:
        state = load_file(str(run_dir / runs.WEIGHTS))
        model.load_state_dict(state)
    except Exception as e:
        raise RunError(f"{run_dir / runs.WEIGHTS}: could not be loaded ({str(e)[:160]}); re-run training") from e
    model.eval()
    return LoadedRun(run_dir, cfg, info, model)


def predict_probs(model, paths: list[str], info: ModelInfo, cache_dir: str | None,
                  printer: Printer, bs: int = 32) -> tuple[Any, list[tuple[str, str]]]:
    """Softmax probabilities for files (through the same decode/resize/normalise path)."""
    import torch

    from nfx.data.cache import predict_files

    device = next(model.parameters()).device

    def forward(x):
        return torch.softmax(model(torch.from_numpy(x).to(device)).float(), 1).cpu().numpy()

    # one bar, two passes over the files: decoding (cache), then prediction
    with torch.inference_mode(), printer.progress(2 * len(paths), "decoding + predicting") as bar:
        return predict_files(paths, forward, spec=info.input, n_classes=info.num_classes, cache_dir=cache_dir,
                             bs=bs, on_decoded=bar.advance, on_batch=bar.advance)


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------
def evaluate(run_dir: str | Path, data: str | None = None, printer: Printer | None = None,
             threshold: float | None = None, n_bootstrap: int = 1000, *, split: str = "valid",
             tta: bool = False, target_sensitivity: float | None = None, per_patient: bool = False,
             plots: bool = True) -> dict[str, Any]:
    """Evaluate a run on its validation/test split or on a DATA folder.

    Writes evaluation.json, predictions.csv, plots/*.png, report.md and report.html into the run
    folder. The headline threshold is `threshold`, else the one reaching `target_sensitivity` on
    the validation split, else 0.5. Youden's threshold is always chosen on the validation split
    and applied unchanged to other data (said to be in-sample when evaluating 'valid' itself).
    """
    printer = printer or Printer()
    n_warn = len(printer.warnings)
    if threshold is not None and target_sensitivity is not None:
        raise ConfigError("pass either --threshold or --target-sensitivity, not both")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold {threshold}: must be a probability in [0, 1]")
    if target_sensitivity is not None and not 0.0 < target_sensitivity <= 1.0:
        raise ConfigError(f"--target-sensitivity {target_sensitivity}: must be in (0, 1], e.g. 0.9")
    if split not in ("valid", "test", "train"):
        raise ConfigError(f"--split {split!r}: choose valid or test")
    run = load_run(run_dir)
    classes = list(run.info.classes)
    split_rows = runs.read_csv(run.run_dir / runs.SPLITS)
    if data is None:
        rows = [r for r in split_rows if r["split"] == split]
        if not rows:
            have = sorted({r["split"] for r in split_rows})
            raise DataError(f"{run.run_dir / runs.SPLITS}: no images in split {split!r} (this run has "
                            f"{', '.join(have)}); use --split valid or pass a DATA folder")
        source = f"{split} split of {run.cfg.data.path}"
        items = _existing_items(run, rows)
    else:
        from nfx.data.discover import discover

        disc = discover(data, run.cfg.data.patient_regex)
        unknown = sorted(set(disc.classes) - set(classes))
        if unknown:
            raise DataError(f"{data}: label folder(s) {unknown} are not classes of this model {classes}")
        items = [(s.path, s.label, s.patient) for s in disc.samples]
        source = f"all images of {data}"
        if disc.bad:  # unsupported or unreadable files found while discovering: reported, not dropped silently
            printer.warn(f"{len(disc.bad)} file(s) in {data} cannot be evaluated and are left out "
                         f"(first: {disc.bad[0][0]}: {disc.bad[0][1]})")
    import numpy as np

    probs = _eval_probs(run, [p for p, _, _ in items], tta, printer)
    keep = [i for i in range(len(items)) if np.isfinite(probs[i]).all()]
    if not keep:
        raise DataError("no image could be evaluated; see the warnings above")
    items = [items[i] for i in keep]
    probs = probs[keep]
    y = np.array([classes.index(lbl) for _, lbl, _ in items])
    patients = [pid or f"file:{p}" for p, _, pid in items]

    from nfx.evaluate.metrics import (
        aggregate_by_patient,
        evaluate_predictions,
        positive_index,
        threshold_for_sensitivity,
        youden_threshold,
    )

    in_sample = data is None and split == "valid"
    ops: dict[str, tuple[float, str]] = {}
    threshold_source = "default"
    head = 0.5 if threshold is None else float(threshold)
    if threshold is not None:
        threshold_source = "given by the user (--threshold)"
    if len(classes) == 2:
        pos = positive_index(classes)
        if in_sample:
            vy, vp = (y == pos).astype(int), probs[:, pos]
        else:
            vy, vp = _validation_scores(run, split_rows, pos, tta, printer)
        where = "valid split (in-sample: these same images)" if in_sample else "valid split"
        ops["default 0.5"] = (0.5, "fixed")
        yt = youden_threshold(vy, vp) if vy is not None else None
        if yt is not None:
            ops["Youden"] = (yt, where)
        else:
            printer.warn("Youden threshold not available: the validation split has images of one class only "
                         "or could not be read")
        if target_sensitivity is not None:
            ts = threshold_for_sensitivity(vy, vp, target_sensitivity) if vy is not None else None
            if ts is None:
                raise DataError("--target-sensitivity needs validation images of both classes; "
                                "pass --threshold instead")
            head = ts
            ops[f"sensitivity ≥ {target_sensitivity:g}"] = (ts, where)
            threshold_source = f"highest threshold reaching sensitivity {target_sensitivity:g} on the {where}"
        elif threshold is not None:
            ops["user"] = (head, "given (--threshold)")
        if in_sample and ("Youden" in ops or target_sensitivity is not None):
            printer.warn("thresholds chosen on the validation split are evaluated on that same split "
                         "(in-sample): their sensitivity/specificity are optimistic; evaluate --split test "
                         "or a DATA folder for an unbiased estimate")

    result, pred, curves = evaluate_predictions(y, probs, classes, patients, head, ops, n_bootstrap, seed=0)
    if len(classes) != 2:
        result["threshold"] = None
    else:
        result["threshold_source"] = threshold_source
    result.update(run=run.run_dir.name, data=source, split=split if data is None else None, tta=tta,
                  weights_source=run.info.weights_source, arch=run.info.arch)
    if per_patient:
        try:
            py, pp, pids = aggregate_by_patient(y, probs, patients,
                                                positive_index(classes) if len(classes) == 2 else None)
            pl, _, _ = evaluate_predictions(py, pp, classes, pids, head, None, n_bootstrap, seed=0)
            result["patient_level"] = {k: pl.get(k) for k in (
                "n_patients", "accuracy", "balanced_accuracy", "roc_auc", "roc_auc_ci", "sensitivity",
                "sensitivity_ci", "specificity", "specificity_ci", "positive_class", "confusion_matrix",
                "ece", "brier")}
        except ValueError as e:
            printer.warn(f"per-patient aggregation skipped: {e}")
    _evaluation_warnings(run, split_rows, items, result, data, printer)
    result["warnings"] = printer.warnings[n_warn:]
    result["provenance"] = _provenance(run, split_rows)

    images: dict[str, bytes] = {}
    if plots:
        images = _evaluation_plots(run, result, curves)
        (run.run_dir / "plots").mkdir(exist_ok=True)
        for name, png in images.items():
            runs.atomic_write_bytes(run.run_dir / "plots" / f"{name}.png", png)
        result["plots"] = {name: f"plots/{name}.png" for name in images}
    runs.atomic_write_json(run.run_dir / runs.EVALUATION, result)
    rows = []
    for (path, label, pid), pr, pd in zip(items, probs, pred):
        row = {"file": path, "patient": pid or "", "label": label}
        row.update({f"p_{c}": round(float(v), 6) for c, v in zip(classes, pr)})
        row["prediction"] = classes[int(pd)]
        rows.append(row)
    runs.atomic_write_csv(run.run_dir / runs.PREDICTIONS, rows)
    from nfx.evaluate.report import render_html, render_markdown

    # rendered from the JSON as written (habit 10): what the report says is what the file holds
    written = json.loads((run.run_dir / runs.EVALUATION).read_text())
    runs.atomic_write_text(run.run_dir / runs.REPORT, render_markdown(written))
    runs.atomic_write_text(run.run_dir / REPORT_HTML, render_html(written, images))
    return result


REPORT_HTML = "report.html"
VALID_SCORES = "valid_scores.json"


def _existing_items(run: LoadedRun, rows: list[dict[str, str]]) -> list[tuple[str, str, str | None]]:
    items = [(r["path"], r["label"], r["patient"] or None) for r in rows]
    missing = [p for p, _, _ in items if not Path(p).is_file()]
    if missing:
        raise DataError(
            f"{missing[0]}: listed in {run.run_dir / runs.SPLITS} but missing ({len(missing)} files); "
            "restore the data folder or pass DATA explicitly"
        )
    return items


class _Flipped:
    """Model wrapper for horizontal-flip TTA (flip the width axis of NCHW input)."""

    def __init__(self, model):
        self.model = model

    def parameters(self):
        return self.model.parameters()

    def __call__(self, x):
        return self.model(x.flip(-1))


def _eval_probs(run: LoadedRun, paths: list[str], tta: bool, printer: Printer):
    probs, bad = predict_probs(run.model, paths, run.info, run.cfg.data.cache_dir, printer)
    if bad:
        printer.warn(f"{len(bad)} file(s) could not be decoded and are left out (first: {bad[0][0]}: {bad[0][1]})")
    if tta:
        flipped, _ = predict_probs(_Flipped(run.model), paths, run.info, run.cfg.data.cache_dir, printer)
        probs = (probs + flipped) / 2
    return probs


def _validation_scores(run: LoadedRun, split_rows, pos: int, tta: bool, printer: Printer):
    """(is-positive labels, P(positive)) on the validation split, for choosing thresholds that are
    then applied to other data. Cached in valid_scores.json, keyed by the weights file and TTA."""
    import numpy as np

    w = (run.run_dir / runs.WEIGHTS).stat()
    key = {"weights_size": w.st_size, "weights_mtime_ns": w.st_mtime_ns, "tta": tta}
    cache = run.run_dir / VALID_SCORES
    if cache.is_file():
        try:
            c = json.loads(cache.read_text())
            if c.get("key") == key:
                return np.array(c["y_pos"], dtype=int), np.array(c["p_pos"], dtype=np.float64)
        except (ValueError, KeyError):
            pass
    rows = [r for r in split_rows if r["split"] == "valid"]
    paths = [r["path"] for r in rows if Path(r["path"]).is_file()]
    if not paths:
        return None, None
    printer.info(f"choosing thresholds on the validation split ({len(paths)} images)")
    probs = _eval_probs(run, paths, tta, Printer(quiet=True))
    label_of = {r["path"]: r["label"] for r in rows}
    ok = np.isfinite(probs).all(1)
    classes = list(run.info.classes)
    y_pos = np.array([classes.index(label_of[p]) == pos for p in paths], dtype=int)[ok]
    p_pos = probs[ok, pos]
    runs.atomic_write_json(cache, {"key": key, "y_pos": y_pos.tolist(), "p_pos": p_pos.tolist()})
    return y_pos, p_pos


def _provenance(run: LoadedRun, split_rows) -> dict[str, Any]:
    from nfx import __version__

    env = {}
    if (run.run_dir / runs.ENV).is_file():
        env = json.loads((run.run_dir / runs.ENV).read_text())
    t = run.cfg.train
    return {
        "dataset": run.cfg.data.path,
        "splits": _split_counts([r["patient"] for r in split_rows], [r["split"] for r in split_rows]),
        "model": {k: run.info.to_json()[k] for k in ("arch", "weights_source", "input_size", "mean", "std", "resize")},
        "training": (f"{t.schedule or 'fine-tune'} schedule: {t.freeze_epochs} head-only + {t.epochs} full "
                     f"epochs, effective batch {t.effective_batch_size}, lr {t.lr:g} (body lr/{t.body_lr_div:g}), AGC {t.agc if t.agc else 'off'}, "
                     f"precision {env.get('precision', '?')}, device {env.get('device', '?')}"),
        "nfx_version": __version__,
        "trained_with_nfx": env.get("nfx"),
        "packages": {k: (env.get("packages") or {}).get(k) for k in ("torch", "timm", "fastai")},
    }


def _evaluation_warnings(run: LoadedRun, split_rows, items, result, data, printer: Printer) -> None:
    """Things a reader of the report must know: small samples, patient leakage, no patient ids,
    heavy AGC clipping, training from scratch."""
    n_pat = result["n_patients"]
    if n_pat < 30:
        printer.warn(f"only {n_pat} patients evaluated: confidence intervals are wide and the point "
                     "estimates unstable")
    ci = result.get("sensitivity_ci") or result.get("roc_auc_ci")
    if ci and ci[1] - ci[0] > 0.3:
        printer.warn(f"a 95% interval is {ci[1] - ci[0]:.2f} wide: too few patients to judge the model")
    if result.get("positive_class") and (result.get("roc_auc_ci") is None):
        printer.warn("no bootstrap interval: too few patients of each class in the evaluated data")
    if all(not pid for _, _, pid in items):
        printer.warn("no patient ids: every image counts as its own patient; if patients have several "
                     "images, the intervals are too narrow")
    split_of: dict[str, set[str]] = {}
    for r in split_rows:
        if r["patient"]:
            split_of.setdefault(r["patient"], set()).add(r["split"])
    leaked = sorted(p for p, s in split_of.items() if len(s) > 1)
    if leaked:
        printer.warn(f"patient leakage: {len(leaked)} patient(s) appear in more than one split "
                     f"(e.g. {leaked[0]}); metrics are optimistic")
    if data is not None:
        train_pat = {r["patient"] for r in split_rows if r["split"] == "train" and r["patient"]}
        train_path = {str(Path(r["path"]).resolve()) for r in split_rows if r["split"] == "train"}
        pats = {pid for _, _, pid in items if pid and pid in train_pat}
        files = [p for p, _, _ in items if str(Path(p).resolve()) in train_path]
        if pats or files:
            printer.warn(f"patient leakage: {len(pats)} patient(s) and {len(files)} file(s) of {data} were "
                         "used for training; metrics on them are optimistic")
    hist = run.run_dir / runs.HISTORY
    if hist.is_file():
        fr = [float(r["agc_clip_fraction"]) for r in runs.read_csv(hist) if r.get("agc_clip_fraction")]
        if fr and max(fr) > 0.5:
            printer.warn(f"heavy AGC clipping: up to {max(fr):.0%} of units clipped per epoch "
                         f"(λ={run.cfg.train.agc}); training may have been throttled — try a larger --agc")
    if run.info.from_scratch:
        printer.warn("the model was trained from scratch (no pretrained weights)")


def _evaluation_plots(run: LoadedRun, ev: dict[str, Any], curves: dict[str, Any]) -> dict[str, bytes]:
    from nfx.evaluate import plots

    out: dict[str, bytes] = {}
    if curves["roc"]:
        out["roc"] = plots.roc_png(curves["roc"], ev["roc_auc"], ev.get("roc_auc_ci"), curves.get("roc_band"))
        out["pr"] = plots.pr_png(curves["pr"])
    sub = f"threshold {ev['threshold']:.3g}" if ev.get("threshold") is not None else "argmax"
    out["confusion"] = plots.confusion_png(ev["confusion_matrix"], ev["classes"], sub)
    out["reliability"] = plots.reliability_png(curves["calibration"])
    hist = run.run_dir / runs.HISTORY
    if hist.is_file():
        rows = runs.read_csv(hist)
        if rows:
            out["training"] = plots.training_png(rows)
    return out


# --------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------
def explain(run_dir: str | Path, images: list[str], out: str | Path, printer: Printer | None = None,
            target_class: str | None = None) -> list[dict[str, Any]]:
    """Grad-CAM overlays (input | overlay PNG per image) into `out`, on the resized input the
    model sees (the run's resize policy and DICOM frame). The explained class is the predicted one unless `target_class` is given."""
    printer = printer or Printer()
    run = load_run(run_dir)
    classes = list(run.info.classes)
    if target_class is not None and target_class not in classes:
        raise ConfigError(f"--class {target_class!r}: not a class of this model {classes}")
    paths = _image_paths(images)
    from nfx.data.cache import ImageCache
    from nfx.explain import gradcam_overlays

    spec = run.info.input
    cache = ImageCache(run.cfg.data.cache_dir, spec.size, spec.frame, resize=spec.resize)
    with printer.progress(len(paths), "decoding") as bar:
        entries, bad = cache.fill(paths, on_done=lambda: bar.advance(1))
    res = gradcam_overlays(run.model, run.info, entries, paths, Path(out),
                           None if target_class is None else classes.index(target_class))
    bad_of = dict(bad)
    for r in res:
        if "error" in r and r["file"] in bad_of:
            r["error"] = bad_of[r["file"]]
    return res


def _image_paths(images: list[str]) -> list[str]:
    from nfx.data.discover import _candidate_files

    paths: list[str] = []
    for im in images:
        p = Path(im)
        if p.is_dir():
            paths += [str(f) for f in _candidate_files(p)]
        elif p.is_file():
            paths.append(str(p))
        else:
            raise DataError(f"{im}: no such file or folder; pass image files or a folder of images")
    if not paths:
        raise DataError(f"no image files found in {', '.join(images)}")
    return paths


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def export(run_dir: str | Path, printer: Printer | None = None, tolerance: float = 1e-4) -> dict[str, Any]:
    printer = printer or Printer()
    run = load_run(run_dir)
    from nfx.export.onnx import export_onnx

    out = run.run_dir / runs.ONNX
    report = export_onnx(run.model, run.info, out, tolerance=tolerance)
    return {"onnx": str(out), **report}


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------
def predict(run_dir: str | Path, images: list[str], printer: Printer | None = None) -> list[dict[str, Any]]:
    """Predict files with the run's ONNX model when exported (ONNX Runtime), else with torch."""
    printer = printer or Printer()
    paths = _image_paths(images)
    run_dir = Path(run_dir)
    onnx_path = run_dir / runs.ONNX
    if onnx_path.is_file():
        from nfx.export.onnx import OnnxPredictor

        predictor = OnnxPredictor(onnx_path)
        info = predictor.info
        cfg = RunConfig.load(runs.require_run(run_dir) / runs.CONFIG)
        probs, bad = predictor.predict_files(paths, cfg.data.cache_dir)
        engine = "onnxruntime"
    else:
        run = load_run(run_dir)
        info = run.info
        probs, bad = predict_probs(run.model, paths, info, run.cfg.data.cache_dir, printer)
        engine = "torch"
    bad_of = dict(bad)
    out = []
    for p, pr in zip(paths, probs):
        if p in bad_of:
            out.append({"file": p, "error": bad_of[p]})
            continue
        k = int(pr.argmax())
        out.append({"file": p, "prediction": info.classes[k], "probability": round(float(pr[k]), 6),
                    "probabilities": {c: round(float(v), 6) for c, v in zip(info.classes, pr)},
                    "engine": engine})
    return out
