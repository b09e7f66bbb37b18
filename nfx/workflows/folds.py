"""k-fold cross-validation (`nfx finetune DATA --folds K`): one parent run folder, one ordinary run
folder per fold, folds grouped by patient and copy group and stratified by label.

    PARENT/
      config.json, env.json, model.json   the resolved config (train.folds = K), as for one run
      folds.csv            path, label, patient, fold (1..K; empty for a user-given test image), split (cv | test)
      copy_signatures.npy  one per row of folds.csv; split_summary.json (folds, copies); bad_files.csv
      fold-1/ … fold-K/    ordinary runs: valid = that fold, train = the other folds, test = the user's
                           test split (each resumable, evaluable, exportable on its own)
      metrics.json         each fold's validation metrics and their mean ± sd, once every fold is done

Every file is decoded once into the shared cache; the K trainings cost K times one. A kill loses at
most the epoch in progress: `nfx finetune --resume PARENT` skips finished folds, resumes the one with
a checkpoint, and starts the rest.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nfx import runs
from nfx.config import RunConfig
from nfx.console import Printer
from nfx.errors import ConfigError, DataError, RunError
from nfx.records import MODEL_INFO, InputSpec, ModelInfo

FOLDS = runs.FOLDS


@dataclass
class FoldsResult:
    run_dir: Path
    metrics: dict[str, Any]


def is_folds_parent(path: str | Path) -> bool:
    return (Path(path) / FOLDS).is_file()


def fold_dir(parent: Path, f: int) -> Path:
    return parent / f"fold-{f}"


def finetune_folds(cfg: RunConfig, printer: Printer | None = None) -> FoldsResult:
    """discover → resolve the model → parent folder → ingest once → assign folds → train each fold."""
    printer = printer or Printer()
    from nfx.config import check_training
    from nfx.train import distributed
    from nfx.workflows.finetune import create_run_folder, discover_data, ingest, prepare

    if distributed.is_distributed():
        raise ConfigError("--folds runs its folds one after another in one process; launch it without "
                          "torchrun / accelerate (each fold can still be resumed or evaluated on its own)")
    t0 = time.time()
    check_training(cfg)
    k = int(cfg.train.folds or 0)
    disc = discover_data(cfg, printer)
    if any(s.split == "valid" for s in disc.samples):  # train rows are cross-validated, test rows kept out
        raise DataError(f"{cfg.data.path}: --folds makes its own validation folds, but the data has a user-given "
                        "valid split; merge it into train (or keep only a test split) or drop --folds")
    prep = prepare(cfg, len(disc.classes), printer)
    cfg, parent = create_run_folder(prep.cfg, prep.precision)
    samples, entries = ingest(cfg, disc, parent, printer)
    from nfx.data.cache import signatures
    from nfx.data.split import group_keys, grouped_stratified_folds, merge_copy_groups
    from nfx.workflows.splitting import check_copies

    sigs = signatures(entries)
    copy_of, copies = check_copies(cfg, samples, sigs, printer)
    pool = [i for i, s in enumerate(samples) if s.split != "test"]
    paths = [s.path for s in samples]
    keys = group_keys(paths, [s.patient for s in samples])
    _check_test_apart(cfg, keys, ["test" if s.split == "test" else "cv" for s in samples], copy_of, paths)
    groups = merge_copy_groups(keys, copy_of)
    try:
        folds = grouped_stratified_folds([samples[i].label for i in pool], [groups[i] for i in pool], k, cfg.train.seed)
    except ValueError as e:
        raise DataError(f"{cfg.data.path}: {e} (a patient and its copies form one group); lower --folds") from e
    fold_of = dict(zip(pool, folds, strict=True))
    rows = [{"path": s.path, "label": s.label, "patient": s.patient or "", "fold": str(fold_of.get(i, "")),
             "split": "test" if s.split == "test" else "cv"} for i, s in enumerate(samples)]
    import numpy as np

    with runs.atomic_path(parent / runs.COPY_SIGNATURES) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(sigs, dtype=np.float16))
    runs.atomic_write_csv(parent / FOLDS, rows)
    per_fold = {f: sum(r["fold"] == str(f) for r in rows) for f in range(1, k + 1)}
    runs.atomic_write_json(parent / runs.SPLIT_SUMMARY, {"source": "grouped_stratified_folds", "folds": k,
                                                         "seed": cfg.train.seed, "images_per_fold": per_fold,
                                                         "test_images": len(samples) - len(pool), "copies": copies})
    info = ModelInfo(arch=cfg.model.arch, classes=tuple(disc.classes), weights_source=prep.weights_source,
                     input=InputSpec(size=cfg.data.size, mean=tuple(prep.data.mean), std=tuple(prep.data.std),
                                     resize=cfg.data.resize, frame=cfg.data.frame, voi=cfg.data.voi_fallback))
    info.write(parent)
    printer.info(f"{k} folds grouped by patient and copy group: {', '.join(str(n) for n in per_fold.values())} "
                 f"images; {k} trainings follow")
    return _train_folds(parent, printer, t0, first=prep)


def _check_test_apart(cfg: RunConfig, keys: list[str], side: list[str], copy_of: list[int], paths: list[str]) -> None:
    """A user-given test split shares no patient and no copy of an image with the cross-validated
    images (the same refusals as a single run's user splits, and the same overrides)."""
    from nfx.data.split import check_no_leaks, copy_straddles

    if "test" not in side:
        return
    check_no_leaks(keys, side, allow=cfg.data.allow_patient_leak, paths=paths)
    straddle = copy_straddles(side, copy_of)
    if straddle and not cfg.data.allow_duplicate_leak:
        a, b = straddle[0][:2]
        raise DataError(f"{len(straddle)} group(s) of copies of one image sit in the test split and in the "
                        f"cross-validated images (e.g. {paths[a]} ≈ {paths[b]}); move each image's copies into one "
                        "split (or delete them), or pass --allow-duplicate-leak")


def resume_folds(parent: str | Path, printer: Printer | None = None) -> FoldsResult:
    """Continue a --folds parent: finished folds are kept, the one with a checkpoint resumes, the rest start."""
    printer = printer or Printer()
    parent = runs.require_run(Path(parent), FOLDS, MODEL_INFO)
    k = int(RunConfig.read_run(parent / runs.CONFIG).train.folds or 0)
    if all(_complete(fold_dir(parent, f)) for f in range(1, k + 1)) and (parent / runs.METRICS).is_file():
        raise RunError(f"{parent}: already complete ({k} folds); nothing to resume")
    return _train_folds(parent, printer, time.time())


def _complete(d: Path) -> bool:
    return (d / runs.WEIGHTS).is_file() and (d / runs.METRICS).is_file()


def _train_folds(parent: Path, printer: Printer, t0: float, first: Any = None) -> FoldsResult:
    import json

    from nfx.workflows.finetune import resume

    cfg = RunConfig.read_run(parent / runs.CONFIG)
    rows = runs.read_csv(parent / FOLDS)
    k = int(cfg.train.folds or 0)
    results: list[dict[str, Any]] = []
    entries: list[Path | None] | None = None  # the cache entries of folds.csv's rows, checked once for every fold
    for f in range(1, k + 1):
        d = fold_dir(parent, f)
        if _complete(d):
            printer.info(f"fold {f}/{k}: done")
            results.append(json.loads((d / runs.METRICS).read_text()))
            continue
        if (d / runs.CKPT_DIR / runs.LAST).is_file():
            printer.info(f"fold {f}/{k}: resuming {d}")
            results.append(resume(d, printer).metrics)
            continue
        printer.info(f"fold {f}/{k}: training, validated on fold {f} ({sum(r['fold'] == str(f) for r in rows)} images)")
        if entries is None:
            entries = _cached(cfg, parent, rows)
        results.append(_start_fold(cfg, parent, rows, entries, f, printer, first))
        first = None  # the model prepared with the parent serves fold 1 only; later folds build their own
    summary = fold_summary(results)
    summary.update(folds=k, seconds=round(time.time() - t0, 1), arch=cfg.model.arch)
    summary.update({key: results[0].get(key) for key in ("weights_source", "effective_batch_size", "precision",
                                                          "device", "agc", "agc_mode") if results})
    runs.atomic_write_json(parent / runs.METRICS, summary)
    return FoldsResult(parent, summary)


def _cached(cfg: RunConfig, parent: Path, rows: list[dict[str, str]]) -> list[Path | None]:
    """Every file of the parent in the shared decode cache (decoded once for all folds)."""
    from nfx.data.cache import ImageCache

    cache = ImageCache.for_spec(cfg.data.cache_dir, ModelInfo.read(parent).input)
    entries, bad = cache.fill([r["path"] for r in rows])
    if bad:
        raise DataError(f"{bad[0][0]}: {bad[0][1]} (a file of this run changed or vanished; restore the data folder)")
    return entries


def _start_fold(cfg: RunConfig, parent: Path, rows: list[dict[str, str]], entries: list[Path | None], f: int,
                printer: Printer, prepared: Any) -> dict[str, Any]:
    """Fold f as an ordinary run: its own folder, config, splits.csv, copy signatures and model."""
    import shutil

    from nfx.data.split import split_counts
    from nfx.train.job import TrainingJob
    from nfx.workflows.finetune import prepare, select, train_run

    d = fold_dir(parent, f)
    if d.exists():  # started, but died before its first checkpoint: nothing in it to keep
        shutil.rmtree(d)
    d.mkdir()
    fcfg = replace(cfg, out=str(parent), name=d.name, train=replace(cfg.train, folds=None))
    fcfg.save(d / runs.CONFIG)
    for name in (runs.ENV, runs.COPY_SIGNATURES, MODEL_INFO):
        if (parent / name).is_file():
            shutil.copyfile(parent / name, d / name)
    info = ModelInfo.read(parent)
    split_of = ["test" if r["split"] == "test" else "valid" if r["fold"] == str(f) else "train" for r in rows]
    runs.atomic_write_csv(d / runs.SPLITS, [{"path": r["path"], "label": r["label"], "patient": r["patient"],
                                             "split": s} for r, s in zip(rows, split_of, strict=True)])
    summary = {"source": f"fold {f} of {cfg.train.folds} (grouped_stratified_folds)", "seed": cfg.train.seed}
    try:
        import json

        summary["copies"] = json.loads((parent / runs.SPLIT_SUMMARY).read_text()).get("copies")
    except (OSError, ValueError):
        pass
    runs.atomic_write_json(d / runs.SPLIT_SUMMARY, summary)
    train, valid = select(fcfg, [r["label"] for r in rows], entries, split_of, list(info.classes))
    prep = prepared or prepare(fcfg, info.num_classes, Printer(quiet=True))
    counts = split_counts([r["patient"] or None for r in rows], split_of)
    res = train_run(TrainingJob(fcfg, prep.model, prep.data, info, train, valid, prep.device, prep.precision, d,
                                counts, prep.notes), printer)
    return res.metrics


FOLD_METRICS = ("valid_accuracy", "valid_roc_auc", "valid_loss")


def fold_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-fold validation metrics (the selected epoch of each) and their mean ± sd."""
    out: dict[str, Any] = {"per_fold": [{**{k: m.get(k) for k in ("selected_epoch", "epochs_run", "kept", *FOLD_METRICS)},
                                         **({"lr_found": m["lr_find"]["lr"]} if m.get("lr_find") else {})}
                                        for m in results]}
    for key in FOLD_METRICS:
        vals = [m[key] for m in results if isinstance(m.get(key), (int, float))]
        out[key] = round(statistics.fmean(vals), 6) if vals else None
        out[f"{key}_sd"] = round(statistics.stdev(vals), 6) if len(vals) > 1 else None
    return out
