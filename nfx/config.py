"""The typed, frozen run configuration and its (de)serialisation.

A RunConfig is saved as `config.json` in the run folder before training starts; loading it
back reproduces the run. Unknown keys are errors (a typo must not silently fall back to a
default). Units are in the names: `bs` is samples per forward pass, `accum` micro-batches per
optimizer step; `effective_batch_size` is derived and never stored.

Imports nothing heavy (no torch): the CLI builds configs before deciding to import anything.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nfx.config_types import type_errors
from nfx.errors import ConfigError
from nfx.records import DEFAULT_VOI_FALLBACK, VOI_FALLBACKS, auto_agc_clip  # noqa: F401  (the λ rule: nfx.config.auto_agc_clip)
from nfx.records import RESIZE_POLICIES as RESIZE  # nfx.data.resize applies them
from nfx.variants import AGC_MODES, AUG_PRESETS, OPTIMIZERS, PERSAMPLE_IMPLS, choices

MAX_SIZE = 2048  # input side; larger ones exhaust memory decoding the cache before any error would name a file
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
BALANCE = ("none", "loss", "sampler")
BN_MODES = ("train", "frozen")  # BatchNorm statistics: the batch's (train mode) | running, never updated (eval mode)


def opt(default: Any, help: str, flag: str | None = None, param: str | None = None) -> Any:
    """A config field that is also an `nfx finetune` option (nfx.cli.train builds the command from these):
    its help, its flag (default --<field-name>; "--x/--no-x" for a switch) and the CLI parameter name when
    it differs from the field's. Placeholders in `help` are filled from the code, never written by hand:
    {default} (the field's default), {by_schedule} (SCHEDULE_DEFAULTS), {one_of:NAME} (a tuple of this
    module), {variants:NAME} (a registry of nfx.variants), {voi_default}."""
    return field(default=default, metadata={"cli": {"help": help, "flag": flag, "param": param}})


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    size: int | None = opt(None, "Input size in px [default: the checkpoint's train size].")  # square side
    valid_pct: float = opt(0.2, "Share of patients for validation {default}.")
    patient_regex: str | None = opt(None, "Regex on file names; group 1 = patient id (when no DICOM PatientID).")
    skip_bad: bool = opt(False, "Continue past unreadable files (listed in bad_files.csv).", "--skip-bad/--no-skip-bad")
    # light measured level with none within 12 epochs (docs/LEARNING.md)
    aug: str = opt("none", "Augmentation preset: {variants:AUG_PRESETS} {default}.")
    cache_dir: str | None = opt(None, "Decoded-image cache [default: $NFX_CACHE_DIR or ~/.cache/nfx].")
    num_workers: int | None = opt(None, "DataLoader workers [default: 0 on CPU, up to 8 on GPU].", "--workers", "workers")
    labels: str | None = opt(None, "CSV with path,label[,patient][,split] columns instead of label folders.")
    frame: int | None = opt(None, "Frame to use from multi-frame DICOMs; single-frame files give their only frame "
                                  "(default: skip multi-frame files with a reason).")
    allow_patient_leak: bool = opt(False, "Accept user splits that share a patient (warned, recorded).")
    allow_duplicate_leak: bool = opt(False, "Accept copies of one image in different user splits or under different "
                                            "labels (warned, recorded; metrics will be optimistic).")
    flip: bool = opt(True, "Horizontal flips in augmentation (use --no-flip for chest X-rays).", "--flip/--no-flip")
    # nfx.data.resize applies the policies; squish chosen on real data, docs/LEARNING.md
    resize: str = opt("squish", "{one_of:RESIZE} {default}.")
    # True: raw patient ids in outputs, else pseudonyms (nfx.data.pseudonym)
    keep_patient_ids: bool = opt(False, "Write raw patient ids to the run's outputs [default: pseudonyms, "
                                        "see README].")
    voi_fallback: str = opt(DEFAULT_VOI_FALLBACK, "Grey DICOMs without any window/VOI LUT: stored (full BitsStored range), "
                                         "minmax or percentile (0.5-99.5) per image {voi_default}.")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = opt("dm_nfnet_f0", "timm architecture {default}.")
    pretrained: bool = opt(True, "Start from pretrained weights [default: pretrained].", "--pretrained/--no-pretrained")
    weights: str | None = opt(None, "Local weights file (safetensors or state dict) for offline use.")
    drop_path: float = opt(0.0, "Stochastic depth: the rate of the last block (timm's drop_path_rate) {default}.")
    dropout: float = opt(0.0, "Dropout before the classifier (timm's drop_rate) {default}.")


SCHEDULES = ("fine-tune", "from-scratch")
# The schedule of each starting point (resolve_schedule); any value given explicitly wins. fine-tune: a
# head-only warm-up epoch on the frozen pretrained body at 4e-3, then every layer at 2e-3 (the head lr is
# halved at unfreezing); measured above fastai's body-at-lr/10 practice from local weights. from-scratch: no
# frozen phase, one lr (a random body has nothing to protect); the fine-tune schedule on a random body cost
# 0.1-0.2 accuracy. Both measured on real brain MRI (docs/LEARNING.md).
SCHEDULE_DEFAULTS: dict[str, dict[str, float]] = {
    "fine-tune": {"freeze_epochs": 1, "lr": 4e-3, "body_lr_div": 1.0},
    "from-scratch": {"freeze_epochs": 0, "lr": 2e-3, "body_lr_div": 1.0},
}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = opt(10, "Epochs with the whole network trainable {default}.")
    # None below = chosen by the schedule (SCHEDULE_DEFAULTS) once nfx knows whether the body
    # is pretrained; config.json always holds the resolved values.
    freeze_epochs: int | None = opt(None, "Head-only warm-up epochs (body frozen) {by_schedule}.")
    bs: int = opt(16, "Samples per forward pass {default}.")  # micro-batch
    accum: int = opt(1, "Micro-batches per optimizer step {default}.")
    lr: float | None = opt(None, "Peak learning rate (fine-tuning: of the head-only warm-up, halved when the body is "
                                 "unfrozen) {by_schedule}.")  # the body gets lr / body_lr_div
    body_lr_div: float | None = opt(None, "Body lr = lr / this {by_schedule}.")
    # nfx.train.lr_find: fastai's lr range test on the run's own Learner; fit() writes the found lr into lr
    lr_find: bool = opt(False, "Choose the peak lr by an lr range test before training (fastai's lr_find on this "
                               "run's Learner, valley suggestion; curve in lr_find.csv/png); not with --lr.",
                        "--lr-find/--no-lr-find")
    schedule: str | None = opt(None, "fine-tune (head-only warm-up, then the whole network) or from-scratch (no "
                                     "warm-up) [default: from the weights: fine-tune from pretrained or --weights, "
                                     "from-scratch with --no-pretrained].")
    optimizer: str = opt("adam", "{variants:OPTIMIZERS} {default}.")
    wd: float = opt(1e-2, "Weight decay, decoupled (p <- p*(1 - lr*wd)); gains, biases and norms exempt {default}.")
    label_smoothing: float = opt(0.0, "Label smoothing of the cross-entropy {default}.")
    mixup: float = opt(0.0, "MixUp α (fastai's MixUp callback; 0 = off, 0.2-0.4 usual) {default}.")
    cutmix: float = opt(0.0, "CutMix α (fastai's CutMix callback: a box of another image pasted in, labels mixed by "
                             "area; 0 = off, 1.0 usual) {default}.")
    agc: float | None = None  # AGC clip factor λ; None = AGC off
    agc_auto: bool = True  # λ was chosen by nfx from the effective batch size
    precision: str = opt("auto", "{one_of:PRECISIONS} {default}.")
    seed: int = opt(42, "Random seed {default}.")
    agc_mode: str = opt("batch", "{variants:AGC_MODES} {default}.")
    persample_chunk: int | None = opt(None, "Samples per vmap chunk in per-sample AGC [default: auto].")
    persample_impl: str = opt("auto", "Per-sample AGC implementation: {variants:PERSAMPLE_IMPLS} {default}.")
    ema: float | None = opt(None, "EMA decay of the weights, e.g. 0.999 (validation and saved model use the EMA).")
    balance: str = opt("none", "Class imbalance: none, loss (weighted loss) or sampler (weighted sampling) {default}.")
    bn: str = opt("train", "BatchNorm models: train (batch statistics) or frozen (eval mode: running statistics, never "
                           "updated; for micro-batches of 1-2) {default}.")
    patience: int | None = opt(None, "Stop after this many epochs without improvement of the monitor.")
    keep: str | None = opt(None, "Weights model.safetensors holds: last (the end of the schedule) or best (the epoch "
                                 "with the best --monitor on the validation split, whose metrics are then optimistic: "
                                 "chosen on the images they score) [default: last; best with --patience].")
    monitor: str | None = opt(None, "Metric for best checkpoint / early stop [default: valid_roc_auc (binary) else "
                                    "valid_loss].")
    compile: bool = opt(False, "torch.compile the model for training.", "--compile/--no-compile", "compile_")
    folds: int | None = opt(None, "K-fold cross-validation: K runs (K times the training cost) under one parent folder, "
                                  "folds grouped by patient and copy group; evaluate/export/predict the parent for "
                                  "out-of-fold metrics and the fold ensemble.")  # nfx.workflows.folds
    world_size: int = 1  # training processes (DDP); from the launcher (torchrun / accelerate), never a flag

    @property
    def kept(self) -> str:
        """The epoch model.safetensors holds: --keep, else best under early stopping (--patience), else
        last. Last by default: on a few hundred images the best epoch by a validation metric is often an
        early one that won by chance, and its metrics are chosen on the data they score (docs/OOF.md)."""
        return self.keep or ("best" if self.patience else "last")

    @property
    def effective_batch_size(self) -> int:
        """Samples per optimizer step, over all processes."""
        return self.bs * self.accum * self.world_size

    @property
    def resolved(self) -> bool:
        return None not in (self.schedule, self.freeze_epochs, self.lr, self.body_lr_div)


def resolve_schedule(train: TrainConfig, from_scratch: bool) -> tuple[TrainConfig, str]:
    """Fill the schedule's unset values for the run's starting point; explicit values win.

    Returns the resolved TrainConfig and one line for the user saying what was chosen and why.
    `from_scratch` is True when the body starts at random init (--no-pretrained); an explicit
    `schedule` overrides that choice.
    """
    policy = train.schedule or ("from-scratch" if from_scratch else "fine-tune")
    defaults = SCHEDULE_DEFAULTS[policy]
    chosen = {k: getattr(train, k) if getattr(train, k) is not None else v for k, v in defaults.items()}
    out = dataclasses.replace(train, schedule=policy, freeze_epochs=int(chosen["freeze_epochs"]),
                              lr=float(chosen["lr"]), body_lr_div=float(chosen["body_lr_div"]))
    validate_train(out)
    why = ("given" if train.schedule else
           "the body starts from random init" if from_scratch else "the body is pretrained")
    given = [k for k in defaults if getattr(train, k) is not None and not (k == "lr" and train.lr_find)]
    div = out.body_lr_div
    if out.lr_find:  # fit() runs the range test and writes the lr it found into config.json
        parts = (["head-only warm-up at that lr, then half of it"] if out.freeze_epochs else []) + (
            [f"body lr/{div:g}"] if div != 1 else [])
        rates = "lr from an lr range test before training" + (f" ({', '.join(parts)})" if parts else "")
    elif out.freeze_epochs:  # fit: the head lr is halved when the body is unfrozen
        rates = f"head-only warm-up at lr {out.lr:g}, then lr {out.lr / 2:g} " + (
            "for all layers" if div == 1 else f"for the head, body lr/{div:g}")
    else:
        rates = f"lr {out.lr:g}, " + ("one lr for all layers" if div == 1 else f"body lr/{div:g}")
    line = (f"schedule: {policy} ({why}): {out.freeze_epochs} head-only + {out.epochs} full epochs, "
            f"{rates}" + (f"; given explicitly: {', '.join(given)}" if given else ""))
    return out, line


# The one upgrade step for old run folders: what a run did for an option that did not exist yet when it
# was made (its config.json lacks the key, or holds null). RunConfig.read_run fills these in when a run is
# interpreted (evaluate, export, predict, resume, folds); a config used as the template of a new run
# (--config) gets today's defaults instead. The in-memory types carry no "older run" states.
LEGACY_RUN_VALUES: dict[str, dict[str, Any]] = {
    "data": {"keep_patient_ids": True,  # raw ids: pseudonyms came later
             "voi_fallback": "stored",  # the full BitsStored range
             "resize": "letterbox"},  # the only policy before --resize
}


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = opt("runs", "Parent folder of run folders {default}.")
    name: str | None = opt(None, "Run folder name [default: <arch>-<time>].")

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object with data/model/train sections, got {type(d).__name__}; "
                              "pass a run folder's config.json")
        d = dict(d)
        d.pop("nfx_version", None)
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        top = {f.name for f in fields(cls)}
        if unknown := set(d) - top:
            raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; valid top-level keys are {sorted(top)}")
        kwargs = {k: _section(sections[k], v, f"{source}: {k}") if k in sections else v for k, v in d.items()}
        return validate(cls(**kwargs))

    def save(self, path: Path) -> None:
        from nfx import __version__
        from nfx.runs import atomic_write_text

        payload = {"nfx_version": __version__, **self.to_dict()}
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")

    @classmethod
    def read_run(cls, path: Path) -> RunConfig:
        """A run's own config.json, upgraded: options newer than the run get what the run did (LEGACY_RUN_VALUES)."""
        return cls.from_dict(_with_legacy(_read_json(Path(path)), legacy=True), source=str(path))

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        """A config.json as the template of a new run: options it lacks (or holds null for) get today's defaults."""
        return cls.from_dict(_with_legacy(_read_json(Path(path)), legacy=False), source=str(path))

    def override(self, **sections: dict[str, Any]) -> RunConfig:
        """Return a copy with the given per-section values replaced (None values ignored)."""
        d = self.to_dict()
        for sec, values in sections.items():
            for k, v in values.items():
                if v is None:
                    continue
                if sec == "top":
                    d[k] = v
                else:
                    if k not in d[sec]:
                        raise ConfigError(f"unknown option {sec}.{k}")
                    d[sec][k] = v
        return RunConfig.from_dict(d)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass a run folder's config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); fix or regenerate it") from e


def _with_legacy(d: Any, legacy: bool) -> Any:
    """Options of LEGACY_RUN_VALUES missing or null in `d`: the old run's value (legacy) or dropped (defaults)."""
    if not isinstance(d, dict):
        return d  # from_dict names the problem
    d = dict(d)
    for sec, values in LEGACY_RUN_VALUES.items():
        if isinstance(d.get(sec), dict):
            d[sec] = {k: v for k, v in d[sec].items() if not (k in values and v is None)}
            if legacy:
                d[sec] = {**{k: v for k, v in values.items() if k not in d[sec]}, **d[sec]}
    return d


def _section(cls: type, value: Any, source: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: expected an object, got {type(value).__name__}")
    names = {f.name for f in fields(cls)}
    if unknown := set(value) - names:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; valid keys are {sorted(names)}")
    if wrong := type_errors(cls, value):
        raise ConfigError(f"{source}: {'; '.join(wrong)}; fix the value (numbers without quotes, true/false, null)")
    return cls(**value)


def validate_train(t: TrainConfig) -> None:
    mixing = "--mixup" if t.mixup else "--cutmix" if t.cutmix else None  # batch mixing (fastai's MixUp / CutMix)
    checks = [
        (t.epochs >= 0, f"--epochs must be >= 0 (got {t.epochs})"),
        (t.freeze_epochs is None or t.freeze_epochs >= 0, f"--freeze-epochs must be >= 0 (got {t.freeze_epochs})"),
        (t.freeze_epochs is None or t.epochs + t.freeze_epochs > 0,
         "--epochs and --freeze-epochs are both 0; nothing to train"),
        (t.bs >= 1, f"--bs must be >= 1 (got {t.bs})"),
        (t.accum >= 1, f"--accum must be >= 1 micro-batch (got {t.accum})"),
        (isinstance(t.world_size, int) and t.world_size >= 1, f"world_size must be >= 1 (got {t.world_size})"),
        (t.lr is None or (math.isfinite(t.lr) and t.lr > 0), f"--lr must be a finite number > 0 (got {t.lr})"),
        (t.body_lr_div is None or (math.isfinite(t.body_lr_div) and t.body_lr_div >= 1),
         f"body_lr_div must be >= 1 (got {t.body_lr_div})"),
        (t.schedule is None or t.schedule in SCHEDULES, f"--schedule must be one of {SCHEDULES} (got {t.schedule!r})"),
        (t.agc is None or t.agc > 0, f"--agc must be a positive clip factor, 'auto' or 'off' (got {t.agc})"),
        (t.precision in PRECISIONS, f"--precision must be one of {PRECISIONS} (got {t.precision!r})"),
        (t.agc_mode in AGC_MODES, f"--agc-mode must be {choices(AGC_MODES)} (got {t.agc_mode!r})"),
        (t.balance in BALANCE, f"--balance must be one of {BALANCE} (got {t.balance!r})"),
        (t.bn in BN_MODES, f"--bn must be one of {BN_MODES} (got {t.bn!r})"),
        (t.ema is None or 0 < t.ema < 1, f"--ema must be a decay between 0 and 1, e.g. 0.999 (got {t.ema})"),
        (t.patience is None or t.patience >= 1, f"--patience must be >= 1 epoch (got {t.patience})"),
        (t.keep is None or t.keep in KEEP, f"--keep must be one of {KEEP} (got {t.keep!r})"),
        (t.folds is None or t.folds >= 2, f"--folds must be >= 2 (got {t.folds})"),
        (t.persample_chunk is None or t.persample_chunk >= 1, f"--persample-chunk must be >= 1 (got {t.persample_chunk})"),
        (t.optimizer in OPTIMIZERS, f"--optimizer must be {choices(OPTIMIZERS)} (got {t.optimizer!r})"),
        (t.persample_impl in PERSAMPLE_IMPLS, f"--persample-impl must be {choices(PERSAMPLE_IMPLS)} (got {t.persample_impl!r})"),
        (t.monitor is None or t.monitor in MONITORS, f"--monitor {t.monitor!r}: not a metric nfx records; "
                                                      f"choose one of {', '.join(MONITORS)}"),
        (math.isfinite(t.wd) and t.wd >= 0, f"--wd must be a finite number >= 0 (got {t.wd})"),
        (0 <= t.label_smoothing < 1, f"--label-smoothing must be in [0, 1) (got {t.label_smoothing})"),
        (math.isfinite(t.mixup) and t.mixup >= 0, f"--mixup must be an α >= 0, e.g. 0.4; 0 = off (got {t.mixup})"),
        (math.isfinite(t.cutmix) and t.cutmix >= 0, f"--cutmix must be an α >= 0, e.g. 1.0; 0 = off (got {t.cutmix})"),
        (t.cutmix == 0 or t.mixup == 0, "--cutmix and --mixup both mix the batch (fastai's two callbacks would mix "
                                         "it twice); choose one"),
        (not mixing or not getattr(AGC_MODES.get(t.agc_mode), "per_sample", False),
         f"{mixing} with --agc-mode {t.agc_mode}: a mixed sample has no gradient of its own to clip; "
         f"use --agc-mode batch or drop {mixing}"),
        (not t.lr_find or t.world_size == 1, f"--lr-find on {t.world_size} processes: each would find its own lr; "
                                             "run the range test on one process and pass the lr it found as --lr"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def validate(cfg: RunConfig) -> RunConfig:
    t, dcfg, m = cfg.train, cfg.data, cfg.model
    validate_train(t)
    checks = [
        (0 <= m.drop_path < 1, f"--drop-path must be in [0, 1), e.g. 0.1 (got {m.drop_path})"),
        (0 <= m.dropout < 1, f"--dropout must be in [0, 1), e.g. 0.25 (got {m.dropout})"),
        (dcfg.resize in RESIZE, f"--resize must be one of {RESIZE} (got {dcfg.resize!r})"),
        (dcfg.voi_fallback in VOI_FALLBACKS, f"--voi-fallback must be one of {VOI_FALLBACKS} (got {dcfg.voi_fallback!r})"),
        (dcfg.aug in AUG_PRESETS, f"--aug must be {choices(AUG_PRESETS)} (got {dcfg.aug!r})"),
        (dcfg.num_workers is None or dcfg.num_workers >= 0, f"--workers must be >= 0 (0 = load in the main process; got {dcfg.num_workers})"),
        (0 < dcfg.valid_pct < 1, f"--valid-pct must be between 0 and 1 (got {dcfg.valid_pct})"),
        (dcfg.size is None or dcfg.size >= 32, f"--size must be >= 32 px (got {dcfg.size})"),
        (dcfg.size is None or dcfg.size <= MAX_SIZE, f"--size must be <= {MAX_SIZE} px (got {dcfg.size}); NFNets are trained at 192-448 px"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    return cfg


@dataclass(frozen=True)
class EvaluateConfig:
    """The options of `nfx evaluate`, validated before the run is loaded."""

    split: str = "valid"
    threshold: float | None = None
    target_sensitivity: float | None = None
    n_bootstrap: int = 1000
    tta: bool = False
    per_patient: bool = False

    def validate(self) -> EvaluateConfig:
        checks = [
            (self.threshold is None or self.target_sensitivity is None,
             "pass either --threshold or --target-sensitivity, not both"),
            (self.threshold is None or 0.0 <= self.threshold <= 1.0,
             f"--threshold {self.threshold}: must be a probability in [0, 1]"),
            (self.target_sensitivity is None or 0.0 < self.target_sensitivity <= 1.0,
             f"--target-sensitivity {self.target_sensitivity}: must be in (0, 1], e.g. 0.9"),
            (self.split in ("valid", "test", "train"), f"--split {self.split!r}: choose valid or test"),
            (self.n_bootstrap >= 0, f"--n-bootstrap must be >= 0 (0 = no intervals; got {self.n_bootstrap})"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        return self


KEEP = ("last", "best")  # what model.safetensors holds (TrainConfig.kept)
MONITORS = ("valid_roc_auc", "valid_loss", "valid_accuracy", "train_loss")  # columns of history.csv


def check_agc_mode(agc_mode: str, agc: float | None, compile_model: bool) -> None:
    """The AGC mode's own cross-field rules (nfx.variants), once AGC's λ is known."""
    mode = AGC_MODES.get(agc_mode)
    msg = mode.check(agc, compile_model) if mode else f"--agc-mode must be {choices(AGC_MODES)} (got {agc_mode!r})"
    if msg:
        raise ConfigError(msg)


def check_training(cfg: RunConfig) -> None:
    """Every rule that needs the finished config (AGC resolved), checked before any file is read."""
    check_agc_mode(cfg.train.agc_mode, cfg.train.agc, cfg.train.compile)


def parse_agc(value: str | None, effective_batch_size: int) -> tuple[float | None, bool]:
    """'auto' | 'off' | '<float>' → (clip factor or None, chosen automatically?)."""
    if value is None or value == "auto":
        return auto_agc_clip(effective_batch_size), True
    if value.lower() in ("off", "none", "0"):
        return None, False
    try:
        v = float(value)
    except ValueError as e:
        raise ConfigError(f"--agc {value!r}: expected 'auto', 'off' or a clip factor such as 0.08") from e
    if v <= 0:
        raise ConfigError(f"--agc {value!r}: the clip factor must be > 0 (use 'off' to disable AGC)")
    return v, False
