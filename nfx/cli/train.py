"""`nfx finetune` and `nfx compare`."""

from __future__ import annotations

from pathlib import Path

import typer

from nfx.cli import app, boundary, printer
from nfx.console import show_compare, show_finetune, show_folds

# finetune option (parameter name) → (config section, field): the one place the two meet
FINETUNE_FLAGS = {
    "data": ("data", "path"), "size": ("data", "size"), "valid_pct": ("data", "valid_pct"),
    "patient_regex": ("data", "patient_regex"), "keep_patient_ids": ("data", "keep_patient_ids"),
    "voi_fallback": ("data", "voi_fallback"),
    "skip_bad": ("data", "skip_bad"), "aug": ("data", "aug"),
    "cache_dir": ("data", "cache_dir"), "workers": ("data", "num_workers"), "labels": ("data", "labels"),
    "frame": ("data", "frame"), "allow_patient_leak": ("data", "allow_patient_leak"),
    "allow_duplicate_leak": ("data", "allow_duplicate_leak"), "flip": ("data", "flip"),
    "resize": ("data", "resize"),
    "arch": ("model", "arch"), "pretrained": ("model", "pretrained"), "weights": ("model", "weights"),
    "epochs": ("train", "epochs"), "freeze_epochs": ("train", "freeze_epochs"), "bs": ("train", "bs"),
    "accum": ("train", "accum"), "lr": ("train", "lr"), "schedule": ("train", "schedule"),
    "body_lr_div": ("train", "body_lr_div"), "precision": ("train", "precision"), "seed": ("train", "seed"),
    "agc_mode": ("train", "agc_mode"), "persample_chunk": ("train", "persample_chunk"),
    "persample_impl": ("train", "persample_impl"), "ema": ("train", "ema"),
    "balance": ("train", "balance"), "bn": ("train", "bn"), "patience": ("train", "patience"), "monitor": ("train", "monitor"),
    "compile_": ("train", "compile"), "folds": ("train", "folds"),
    "out": ("top", "out"), "name": ("top", "name"),
}


def _default(section: str, field: str) -> str:
    """'[default: X]' from RunConfig's own default: help, README and code cannot drift apart."""
    from nfx.config import RunConfig

    cfg = RunConfig()
    value = getattr(cfg if section == "top" else getattr(cfg, section), field)
    return f"[default: {value}]"


def _by_schedule(field: str) -> str:
    """'[default: A fine-tuning, B from scratch]' from the schedule table nfx resolves with."""
    from nfx.config import SCHEDULE_DEFAULTS

    fine, scratch = SCHEDULE_DEFAULTS["fine-tune"][field], SCHEDULE_DEFAULTS["from-scratch"][field]
    return f"[default: {fine:g} fine-tuning, {scratch:g} from scratch]"


def _variants(registry: str) -> str:
    """'a (what a does), b (…) or c (…)' from a registry of nfx.variants: choices and help in one place."""
    from nfx import variants

    reg = getattr(variants, registry)
    parts = [f"{k} ({v.help})" for k, v in reg.items()]
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"


def _voi_default() -> str:
    from nfx.records import DEFAULT_VOI_FALLBACK

    return f"[default: {DEFAULT_VOI_FALLBACK}, see docs/VOI_FALLBACK.md]"


@app.command()
@boundary
def finetune(
    data: Path | None = typer.Argument(None, help="Data folder: one sub-folder per label (optionally under train/ valid/ test/)."),
    config: Path | None = typer.Option(None, "--config", help="Start from a run's config.json (options below override it)."),
    arch: str | None = typer.Option(None, "--arch", help=f"timm architecture {_default('model', 'arch')}."),
    pretrained: bool | None = typer.Option(None, "--pretrained/--no-pretrained", help="Start from pretrained weights [default: pretrained]."),
    weights: Path | None = typer.Option(None, "--weights", help="Local weights file (safetensors or state dict) for offline use."),
    epochs: int | None = typer.Option(None, "--epochs", help=f"Epochs with the whole network trainable {_default('train', 'epochs')}."),
    freeze_epochs: int | None = typer.Option(None, "--freeze-epochs", help=f"Head-only warm-up epochs (body frozen) {_by_schedule('freeze_epochs')}."),
    schedule: str | None = typer.Option(None, "--schedule", help="fine-tune (head-only warm-up, then the whole network) or from-scratch (no warm-up) [default: from the weights: fine-tune from pretrained or --weights, from-scratch with --no-pretrained]."),
    body_lr_div: float | None = typer.Option(None, "--body-lr-div", help=f"Body lr = lr / this {_by_schedule('body_lr_div')}."),
    resize: str | None = typer.Option(None, "--resize", help=f"squish, letterbox or crop {_default('data', 'resize')}."),
    bs: int | None = typer.Option(None, "--bs", help=f"Samples per forward pass {_default('train', 'bs')}."),
    accum: int | None = typer.Option(None, "--accum", help=f"Micro-batches per optimizer step {_default('train', 'accum')}."),
    lr: float | None = typer.Option(None, "--lr", help=f"Peak learning rate (fine-tuning: of the head-only warm-up, halved when the body is unfrozen) {_by_schedule('lr')}."),
    agc: str | None = typer.Option(None, "--agc", help="AGC clip factor: auto (from the effective batch size), off, or a number."),
    size: int | None = typer.Option(None, "--size", help="Input size in px [default: the checkpoint's train size]."),
    seed: int | None = typer.Option(None, "--seed", help=f"Random seed {_default('train', 'seed')}."),
    out: str | None = typer.Option(None, "--out", help=f"Parent folder of run folders {_default('top', 'out')}."),
    name: str | None = typer.Option(None, "--name", help="Run folder name [default: <arch>-<time>]."),
    valid_pct: float | None = typer.Option(None, "--valid-pct", help=f"Share of patients for validation {_default('data', 'valid_pct')}."),
    patient_regex: str | None = typer.Option(None, "--patient-regex", help="Regex on file names; group 1 = patient id (when no DICOM PatientID)."),
    voi_fallback: str | None = typer.Option(None, "--voi-fallback", help=f"Grey DICOMs without any window/VOI LUT: stored (full BitsStored range), minmax or percentile (0.5-99.5) per image {_voi_default()}."),
    keep_patient_ids: bool | None = typer.Option(None, "--keep-patient-ids", help="Write raw patient ids to the run's outputs [default: pseudonyms, see README]."),
    skip_bad: bool | None = typer.Option(None, "--skip-bad/--no-skip-bad", help="Continue past unreadable files (listed in bad_files.csv)."),
    aug: str | None = typer.Option(None, "--aug", help=f"Augmentation preset: {_variants('AUG_PRESETS')} {_default('data', 'aug')}."),
    precision: str | None = typer.Option(None, "--precision", help=f"auto, bf16, fp16 or fp32 {_default('train', 'precision')}."),
    workers: int | None = typer.Option(None, "--workers", help="DataLoader workers [default: 0 on CPU, up to 8 on GPU]."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help="Decoded-image cache [default: ~/.cache/nfx]."),
    labels: Path | None = typer.Option(None, "--labels", help="CSV with path,label[,patient][,split] columns instead of label folders."),
    frame: int | None = typer.Option(None, "--frame", help="Frame to use from multi-frame DICOMs; single-frame files give their only frame (default: skip multi-frame files with a reason)."),
    allow_patient_leak: bool | None = typer.Option(None, "--allow-patient-leak", help="Accept user splits that share a patient (warned, recorded)."),
    allow_duplicate_leak: bool | None = typer.Option(None, "--allow-duplicate-leak", help="Accept copies of one image in different user splits or under different labels (warned, recorded; metrics will be optimistic)."),
    flip: bool | None = typer.Option(None, "--flip/--no-flip", help="Horizontal flips in augmentation (use --no-flip for chest X-rays)."),
    agc_mode: str | None = typer.Option(None, "--agc-mode", help=f"{_variants('AGC_MODES')} {_default('train', 'agc_mode')}."),
    persample_chunk: int | None = typer.Option(None, "--persample-chunk", help="Samples per vmap chunk in per-sample AGC [default: auto]."),
    persample_impl: str | None = typer.Option(None, "--persample-impl", help=f"Per-sample AGC implementation: {_variants('PERSAMPLE_IMPLS')} {_default('train', 'persample_impl')}."),
    ema: float | None = typer.Option(None, "--ema", help="EMA decay of the weights, e.g. 0.999 (validation and saved model use the EMA)."),
    bn: str | None = typer.Option(None, "--bn", help=f"BatchNorm models: train (batch statistics) or frozen (eval mode: running statistics, never updated; for micro-batches of 1-2) {_default('train', 'bn')}."),
    balance: str | None = typer.Option(None, "--balance", help=f"Class imbalance: none, loss (weighted loss) or sampler (weighted sampling) {_default('train', 'balance')}."),
    patience: int | None = typer.Option(None, "--patience", help="Stop after this many epochs without improvement of the monitor."),
    monitor: str | None = typer.Option(None, "--monitor", help="Metric for best checkpoint / early stop [default: valid_roc_auc (binary) else valid_loss]."),
    compile_: bool | None = typer.Option(None, "--compile/--no-compile", help="torch.compile the model for training."),
    folds: int | None = typer.Option(None, "--folds", help="K-fold cross-validation: K runs (K times the training cost) under one parent folder, folds grouped by patient and copy group; evaluate/export/predict the parent for out-of-fold metrics and the fold ensemble."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue this run folder (or a --folds parent: its unfinished folds) from its last completed epoch."),
) -> None:
    """Fine-tune a timm model (NFNet by default) on a folder of images."""
    opts = dict(locals())

    from nfx.config import RunConfig, parse_agc

    if resume is not None:
        from nfx import api
        from nfx.errors import ConfigError

        given = [f"--{k.rstrip('_').replace('_', '-')}" for k, v in opts.items() if v is not None and k != "resume"]
        if given:
            raise ConfigError(f"--resume continues a run with its own config.json; drop {', '.join(sorted(given))} "
                              "(or start a new run with --config RUN_DIR/config.json and your changes)")
        p = printer()
        if api.is_folds_parent(resume):
            show_folds(p, api.resume_folds(resume, p))
            return
        show_finetune(p, api.resume(resume, p))
        return
    base = RunConfig.load(config) if config else RunConfig()
    if data is None and not base.data.path:
        from nfx.errors import ConfigError

        raise ConfigError("no data folder given; usage: nfx finetune DATA [options]")
    sections: dict[str, dict] = {"data": {}, "model": {}, "train": {}, "top": {}}
    for flag, (section, key) in FINETUNE_FLAGS.items():
        v = opts[flag]
        sections[section][key] = str(v) if isinstance(v, Path) else v
    cfg = base.override(**sections)
    from dataclasses import replace

    from nfx.train.distributed import env_world_size

    # several processes (torchrun / accelerate launch): the effective batch counts all of them
    cfg = replace(cfg, train=replace(cfg.train, world_size=env_world_size()))
    if agc is not None or cfg.train.agc_auto:
        value, auto = parse_agc(agc, cfg.train.effective_batch_size)
        cfg = replace(cfg, train=replace(cfg.train, agc=value, agc_auto=auto))
    from nfx import api

    p = printer()
    if cfg.train.folds:
        show_folds(p, api.finetune_folds(cfg, p))
        return
    show_finetune(p, api.finetune(cfg, p))


@app.command()
@boundary
def compare(
    data: Path = typer.Argument(..., help="Data folder: one sub-folder per label."),
    models: str = typer.Option("nf_resnet26,resnet26", "--models", help="Comma-separated timm architectures (an NF net and a BatchNorm net of similar size)."),
    micro_batches: str = typer.Option("4,8,32", "--micro-batches", help="Comma-separated micro-batch sizes (--bs); --accum = effective / micro."),
    effective_batch: int = typer.Option(32, "--effective-batch", help="Samples per optimizer step, kept fixed across the grid."),
    agc: str = typer.Option("on,off", "--agc", help="on, off or on,off (on = --agc auto from the effective batch)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds (each seed: its own split and init)."),
    size: int = typer.Option(64, "--size", help="Input size in px."),
    epochs: int = typer.Option(6, "--epochs", help="Epochs per cell."),
    pretrained: bool = typer.Option(False, "--pretrained/--no-pretrained", help="Start every cell from hub weights [default: from scratch]."),
    out: str = typer.Option("runs", "--out", help="Parent folder of the comparison folder."),
    name: str = typer.Option("compare", "--name", help="Comparison folder name (rerun the same command to resume)."),
    bn: str = typer.Option("train", "--bn", help="BatchNorm statistics of the BatchNorm nets: train, frozen (eval mode, `nfx finetune --bn frozen`) or train,frozen; NF nets run once."),
    folds: int | None = typer.Option(None, "--folds", help="Each cell a K-fold cross-validation (K times the cost): its accuracy / ROC AUC out-of-fold, with a patient-bootstrap CI."),
    extra: str | None = typer.Option(None, "--finetune-args", help="Further `nfx finetune` options for every cell, e.g. '--aug none --workers 0'."),
) -> None:
    """Grid of finetune runs: NF vs BatchNorm model × micro-batch (same effective batch via --accum) × AGC × seeds."""

    import shlex

    from nfx import api
    from nfx.errors import ConfigError

    def ints(opt: str, v: str) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in v.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"{opt} {v!r}: expected comma-separated integers, e.g. 4,8,32") from None

    agc_vals = {"on": True, "off": False}
    try:
        agc_t = tuple(agc_vals[x.strip()] for x in agc.split(","))
    except KeyError:
        raise ConfigError(f"--agc {agc!r}: expected on, off or on,off") from None
    cfg = api.CompareConfig(
        data=str(data), models=tuple(m.strip() for m in models.split(",") if m.strip()),
        micro_batches=ints("--micro-batches", micro_batches), effective_batch=effective_batch, agc=agc_t,
        seeds=ints("--seeds", seeds), size=size, epochs=epochs, pretrained=pretrained, out=out, name=name,
        extra=tuple(shlex.split(extra)) if extra else (), folds=folds,
        bn=tuple(x.strip() for x in bn.split(",") if x.strip()),
    )
    p = printer()
    res = api.compare(cfg, p)
    show_compare(p, res, cfg)
