"""finetune and resume: discover → resolve the model and schedule → write the run folder's
config → ingest (decode + cache, bad files) → split by patient → train → metrics.

Each step is a named function; `finetune` is their straight sequence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nfx import runs
from nfx.config import RunConfig
from nfx.console import Printer
from nfx.data.split import split_counts
from nfx.errors import DataError, RunError
from nfx.records import MODEL_INFO, InputSpec, ModelInfo
from nfx.train.job import Selection, TrainingJob
from nfx.workflows.splitting import split, write_splits


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def finetune(cfg: RunConfig, printer: Printer | None = None) -> RunResult:
    """discover → prepare the model and schedule → create the run folder → ingest → split →
    select train/valid → record the model → train. Launched on several processes (torchrun /
    accelerate launch), every rank runs this; only rank 0 writes `cfg.out` and prints."""
    printer = printer or Printer()
    from nfx.train import distributed

    if distributed.is_distributed():
        with distributed.rank_folder(cfg.out) as (out, main):
            cfg = replace(cfg, out=str(out), train=replace(cfg.train, world_size=distributed.env_world_size()))
            return _finetune(cfg, printer if main else Printer(quiet=True))
    return _finetune(cfg, printer)


def _finetune(cfg: RunConfig, printer: Printer) -> RunResult:
    t_start = time.time()
    from nfx.config import check_training

    check_training(cfg)  # cross-field rules fail before any file is read
    disc = discover_data(cfg, printer)
    pat = f"{disc.n_patients} patients" if disc.n_patients else "no patient ids"
    printer.info(f"found {len(disc.samples)} images in {len(disc.classes)} classes ({', '.join(disc.classes)}), {pat}")
    prep = prepare(cfg, len(disc.classes), printer)
    cfg, run_dir = create_run_folder(prep.cfg, prep.precision)
    samples, entries = ingest(cfg, disc, run_dir, printer)
    from nfx.data.cache import signatures

    sigs = signatures(entries)
    split_of = split(cfg, samples, printer, run_dir, sigs=sigs)
    counts = write_splits(samples, split_of, run_dir, printer, sigs=sigs)
    train, valid = select(cfg, [s.label for s in samples], entries, split_of, disc.classes,
                          user_splits=any(s.split for s in samples))
    info = ModelInfo(arch=cfg.model.arch, classes=tuple(disc.classes), weights_source=prep.weights_source,
                     input=InputSpec(size=cfg.data.size, mean=tuple(prep.data.mean), std=tuple(prep.data.std),
                                     resize=cfg.data.resize, frame=cfg.data.frame,
                                     voi=cfg.data.voi_fallback))
    info.write(run_dir)
    return train_run(TrainingJob(cfg, prep.model, prep.data, info, train, valid, prep.device, prep.precision,
                                 run_dir, counts, prep.notes, t_start=t_start), printer)


@dataclass
class Prepared:
    """The model and everything resolved once it exists (architecture, input size, schedule)."""

    cfg: RunConfig
    model: Any
    data: Any  # nfx.models.factory.Preprocessing: the checkpoint's mean/std and sizes
    weights_source: str
    device: Any
    precision: str
    notes: list[str]


def prepare(cfg: RunConfig, num_classes: int, printer: Printer) -> Prepared:
    """Create the timm model (weights from the hub or a file, or random init), then resolve what
    depends on it: the architecture's real name, the input size, the schedule, device, precision."""
    import torch  # after cheap checks: a bad folder fails in well under a second

    from nfx.config import resolve_schedule
    from nfx.models.factory import create_model
    from nfx.records import SCRATCH
    from nfx.train.learner import resolve_device, resolve_precision

    notes: list[str] = []
    torch.manual_seed(cfg.train.seed)  # the new head's (or a from-scratch model's) initialisation
    model, data, weights_source = create_model(cfg.model.arch, num_classes, cfg.model.pretrained,
                                               cfg.model.weights, notes, cfg.model.drop_path, cfg.model.dropout)
    for n in notes:
        printer.note(n)
    arch = model.pretrained_cfg.get("architecture", cfg.model.arch)
    if weights_source == SCRATCH:
        printer.warn(f"{arch}: no pretrained weights (--no-pretrained); this run trains from scratch")
        from nfx.models.factory import is_nf
        from nfx.records import NF_FROM_SCRATCH_NOTE

        if is_nf(arch):
            printer.note(NF_FROM_SCRATCH_NOTE)
    from nfx.models.factory import check_batchnorm

    has_bn = check_batchnorm(model, arch, cfg.train.bn, cfg.train.bs, cfg.data.size or data.train_size)
    if has_bn and cfg.train.bs == 1 and cfg.train.bn == "train":
        from nfx.records import BN_AT_BS1_DROP, BN_AT_BS1_NOTE

        printer.note(BN_AT_BS1_NOTE.format(drop=BN_AT_BS1_DROP))
    device = resolve_device()
    precision = resolve_precision(cfg.train.precision, device, printer.warn)
    train_cfg, schedule_line = resolve_schedule(cfg.train, from_scratch=weights_source == SCRATCH)
    printer.info(schedule_line)
    cfg = replace(cfg, data=replace(cfg.data, size=cfg.data.size or data.train_size, path=str(Path(cfg.data.path))),
                  model=replace(cfg.model, arch=arch), train=train_cfg)
    return Prepared(cfg, model, data, weights_source, device, precision, notes)


def create_run_folder(cfg: RunConfig, precision: str) -> tuple[RunConfig, Path]:
    """The run folder with config.json (every resolved value) and env.json, before any decoding."""
    from nfx.data.augment import describe

    run_dir = runs.new_run_dir(cfg.out, cfg.name, cfg.model.arch)
    cfg = replace(cfg, name=run_dir.name)
    cfg.save(run_dir / runs.CONFIG)
    env = runs.environment()
    env["precision"] = precision
    env["augmentation"] = describe(cfg.data.aug, cfg.data.flip)  # the preset's resolved transforms
    runs.atomic_write_json(run_dir / runs.ENV, env)
    return cfg, run_dir


def select(cfg: RunConfig, labels: list[str], entries, split_of: list[str], classes: list[str],
           user_splits: bool = False) -> tuple[Selection, Selection]:
    """The train and valid selections (cache entries, class indices) of every image's label and split;
    refuses an empty validation split, a training split smaller than one batch and a class missing
    from either. The one selection of fresh, resumed and fold runs."""
    cls_idx = {c: i for i, c in enumerate(classes)}
    sel = {sp: [i for i in range(len(labels)) if split_of[i] == sp] for sp in ("train", "valid")}
    if not sel["valid"]:
        raise DataError(f"{cfg.data.path}: the validation split is empty; add images or raise --valid-pct")
    if len(sel["train"]) < cfg.train.bs:
        raise DataError(
            f"{cfg.data.path}: the training split has {len(sel['train'])} images, fewer than --bs "
            f"{cfg.train.bs}; lower --bs"
        )
    from collections import Counter

    per_class = Counter(labels)
    few = sorted(c for c in classes if per_class[c] < 2)
    if few and not user_splits:
        raise DataError(f"{cfg.data.path}: class {few[0]!r} has {per_class[few[0]]} image(s); a class needs at "
                        "least 2 (one to train on, one to validate); add images or remove the class")
    in_train = {labels[i] for i in sel["train"]}
    for c in classes:
        if c not in in_train:
            raise DataError(f"{cfg.data.path}: class {c!r} has no training images (its {per_class[c]} image(s) are all in "
                            "the validation/test split); add training images of it, or remove the class")
    in_valid = {labels[i] for i in sel["valid"]}
    for c in classes:  # its accuracy would count nothing and ROC AUC / the checkpoint monitor be undefined
        if c not in in_valid:
            fix = ("add validation images of it (valid/<class>/) or let nfx split (no train/valid folders)"
                   if user_splits else "raise --valid-pct or add images of it")
            raise DataError(f"{cfg.data.path}: class {c!r} has no validation images (its {per_class[c]} image(s) "
                            f"are all in the training split); {fix}")
    return tuple(Selection([entries[i] for i in sel[sp]], [cls_idx[labels[i]] for i in sel[sp]])
                 for sp in ("train", "valid"))


def train_run(job: TrainingJob, printer: Printer) -> RunResult:
    """Train the job (nfx.train.fit) and write metrics.json."""
    from nfx.models.factory import batchnorm_layers
    from nfx.train.fit import fit

    history, final = fit(job, printer)
    cfg = job.cfg
    metrics = {
        **final,
        "arch": job.info.arch,
        "weights_source": job.info.weights_source,
        "precision": job.precision,
        "device": str(job.device),
        "effective_batch_size": cfg.train.effective_batch_size,
        "agc": cfg.train.agc,
        "agc_mode": cfg.train.agc_mode,
        "batchnorm_layers": len(batchnorm_layers(job.model)),  # MODEL.md: the measured BatchNorm regimes
        "splits": job.counts,
        "seconds": round(time.time() - job.t_start, 1),
    }
    import torch

    if job.device.type == "cuda":
        metrics["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(job.device) / 2**20, 1)
    runs.atomic_write_json(job.run_dir / runs.METRICS, metrics)
    return RunResult(job.run_dir, metrics, history, job.notes)


def resume(run_dir: str | Path, printer: Printer | None = None) -> RunResult:
    """Continue a run from its last completed epoch (model, optimizer, EMA, history, best-so-far;
    RNG is re-seeded per epoch, so the continuation replays the uninterrupted run)."""
    printer = printer or Printer()
    from nfx.train import distributed

    if distributed.is_distributed():
        with distributed.rank_folder(Path(run_dir).parent) as (out, main):
            if not main:  # a private copy of rank 0's run folder: same state, own writes
                import shutil

                shutil.copytree(run_dir, out / Path(run_dir).name)
            return _resume(out / Path(run_dir).name, printer if main else Printer(quiet=True))
    return _resume(Path(run_dir), printer)


def _resume(run_dir: Path, printer: Printer) -> RunResult:
    from nfx.train import distributed

    t_start = time.time()
    from nfx.train.checkpoint import load_last

    run_dir = Path(run_dir)
    ckpt = None
    if run_dir.is_dir():
        for folder in (run_dir, run_dir / runs.CKPT_DIR):  # what a kill -9 left half-written
            if folder.is_dir():
                runs.remove_stale_temps(folder)
        ckpt = load_last(run_dir)
        if ckpt is None and (run_dir / runs.CONFIG).is_file():  # killed during ingest or its first epoch
            raise RunError(f"{run_dir}: no checkpoint to resume from (it stopped before finishing an epoch); "
                           f"start it again with `nfx finetune --config {run_dir / runs.CONFIG}`")
    run_dir = runs.require_run(run_dir, runs.SPLITS, MODEL_INFO)
    cfg = RunConfig.read_run(run_dir / runs.CONFIG)
    if cfg.train.world_size != distributed.env_world_size():
        raise RunError(f"{run_dir}: trained on {cfg.train.world_size} process(es), resumed on "
                       f"{distributed.env_world_size()}; resume with the launch it started with "
                       f"(e.g. torchrun --nproc_per_node {cfg.train.world_size} -m nfx finetune --resume {run_dir})")
    info = ModelInfo.read(run_dir)
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
    cache = ImageCache.for_spec(cfg.data.cache_dir, spec)
    paths = [r["path"] for r in rows]
    with printer.progress(len(paths), "checking cache") as bar:
        entries, bad = cache.fill(paths, on_done=lambda: bar.advance(1))
    if bad:
        raise DataError(f"{bad[0][0]}: {bad[0][1]} (a file of this run changed or vanished; "
                        "restore the data folder to resume)")
    train, valid = select(cfg, [r["label"] for r in rows], entries, [r["split"] for r in rows], list(info.classes),
                          user_splits=True)
    prep = Preprocessing(spec.size, spec.size, spec.mean, spec.std, "")
    model = build_for_inference(info.arch, info.num_classes)
    device = resolve_device()
    precision = resolve_precision(cfg.train.precision, device, printer.warn)
    counts = split_counts([r["patient"] for r in rows], [r["split"] for r in rows])
    return train_run(TrainingJob(cfg, model, prep, info, train, valid, device, precision, run_dir, counts,
                                 resume=ckpt, t_start=t_start), printer)


def discover_data(cfg: RunConfig, printer: Printer):
    """Files → samples (headers only, in parallel, with progress)."""
    from nfx.data.discover import discover

    with printer.progress(None, "scanning files") as bar:
        disc = discover(cfg.data.path, cfg.data.patient_regex, cfg.data.labels, on_progress=bar.advance,
                        pseudonymise=not cfg.data.keep_patient_ids)
    for note in disc.notes:
        printer.warn(note)
    return disc


def ingest(cfg: RunConfig, disc, run_dir: Path, printer: Printer):
    """Decode every file into the cache (the bad-file scan and the cache fill are one pass).

    Every unusable file — unsupported type, unreadable header (from discovery), decode failure,
    multi-frame without --frame — is written to bad_files.csv with its reason; then either one
    error pointing at that file, or (--skip-bad) a warning and the rest goes on.
    """
    from nfx.data.cache import ImageCache

    cache = ImageCache(cfg.data.cache_dir, cfg.data.size, cfg.data.frame, resize=cfg.data.resize,
                       voi=cfg.data.voi_fallback)
    paths = [s.path for s in disc.samples]
    with printer.progress(len(paths), "decoding + caching") as bar:
        filled = cache.fill(paths, workers=cfg.data.num_workers or None, on_done=lambda: bar.advance(1))
    entries, bad, st = filled.entries, filled.bad, filled.stats
    if filled.notes:
        path, note = filled.notes[0]
        printer.note(f"{len(filled.notes)} file(s) decoded with a note (first: {path}: {note})")
    if st.get("hits"):
        printer.info(f"cache: {st['hits']} of {len(paths)} images reused, {st['decoded']} decoded ({cache.dir})")
    bad = sorted(disc.bad + bad)
    bad_csv = run_dir / runs.BAD_FILES
    if bad:
        from nfx.data.dicom import DICOMDIR_REASON

        runs.atomic_write_csv(bad_csv, [{"path": p, "reason": r} for p, r in bad], fieldnames=["path", "reason"])
        n_index = sum(r == DICOMDIR_REASON for _, r in bad)
        if n_index:
            printer.note(f"{n_index} DICOMDIR index file(s) skipped (not images; listed in {bad_csv})")
        if not cfg.data.skip_bad and n_index < len(bad):
            bad = [b for b in bad if b[1] != DICOMDIR_REASON]
            first = f"{bad[0][0]}: {bad[0][1]}"
            raise DataError(
                f"{len(bad)} file(s) could not be used (listed in {bad_csv}; first: {first}); "
                "fix or remove them, or pass --skip-bad"
            )
        if len(bad) > n_index:
            printer.warn(f"skipping {len(bad) - n_index} unusable file(s), listed with reasons in {bad_csv}")
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
