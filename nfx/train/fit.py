"""The fine-tuning sequence: head-only warm-up (body frozen), then the whole network with
discriminative learning rates, each phase a one-cycle schedule. Writes history.csv after every
epoch and model.safetensors at the end (reloaded once to verify).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from nfx import runs
from nfx.config import RunConfig
from nfx.train.callbacks import EpochLog, RichProgress
from nfx.train.learner import build_learner

HISTORY_FIELDS = ["epoch", "phase", "train_loss", "valid_loss", "valid_accuracy", "valid_roc_auc",
                  "lr", "agc_clip_fraction", "seconds"]


def fit(cfg: RunConfig, model, prep, *, train, valid, num_classes: int, device: torch.device,
        precision: str, run_dir: Path, printer) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from fastai.torch_core import set_seed

    from nfx.data.dataloaders import make_dataloaders

    t = cfg.train
    set_seed(t.seed, reproducible=True)
    workers = cfg.data.num_workers
    if workers is None:
        workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    dls = make_dataloaders(train, valid, bs=t.bs, mean=prep.mean, std=prep.std, aug=cfg.data.aug,
                           flip=True, num_workers=workers, device=device, seed=t.seed)
    w = build_learner(dls, model, num_classes=num_classes, wd=t.wd, precision=precision,
                      accum=t.accum, agc=t.agc, device=device)
    learn = w.learn
    history: list[dict[str, Any]] = []

    def on_epoch(row: dict[str, Any]) -> None:
        history.append(row)
        runs.atomic_write_csv(run_dir / runs.HISTORY, history, HISTORY_FIELDS)
        agc_txt = "" if row.get("agc_clip_fraction") is None else f"  agc clipped {row['agc_clip_fraction']:.1%}"
        printer.info(
            f"epoch {row['epoch']:>3} [{row['phase']}]  train_loss {row.get('train_loss', float('nan')):.4f}  "
            f"valid_loss {row.get('valid_loss', float('nan')):.4f}  acc {_fmt(row.get('valid_accuracy'))}  "
            f"auc {_fmt(row.get('valid_roc_auc'))}{agc_txt}"
        )
        if w.agc_cb and w.agc_cb.epoch_min_step_fraction is not None and w.agc_cb.epoch_min_step_fraction > 0.95:
            printer.warn(
                f"AGC clipped more than 95% of units at every step of epoch {row['epoch']} "
                f"(λ={t.agc}); raise --agc or lower --lr"
            )

    if t.freeze_epochs:
        learn.freeze()
        _run_phase(learn, "frozen", t.freeze_epochs, t.lr, on_epoch, w, printer, 0)
    if t.epochs:
        learn.unfreeze()
        head_lr = t.lr / 2 if t.freeze_epochs else t.lr
        _run_phase(learn, "unfrozen", t.epochs, slice(head_lr / t.body_lr_div, head_lr), on_epoch, w,
                   printer, t.freeze_epochs)

    save_weights(learn.model, run_dir / runs.WEIGHTS)
    last = history[-1]
    final = {k: last.get(k) for k in ("valid_accuracy", "valid_roc_auc", "valid_loss", "train_loss")}
    final["epochs_run"] = len(history)
    final["optimizer_steps"] = w.accum_cb.n_steps if w.accum_cb else None
    final["agc_calls"] = w.agc_cb.n_calls if w.agc_cb else 0
    return history, final


def _run_phase(learn, phase: str, n_epoch: int, lr, on_epoch, w, printer, offset: int) -> None:
    cbs = [EpochLog(phase, on_epoch, w.agc_cb, printer, offset), RichProgress(printer, f"training ({phase})")]
    learn.fit_one_cycle(n_epoch, lr, cbs=cbs)


def save_weights(model, path: Path) -> None:
    """safetensors, written atomically and reloaded once to verify."""
    from safetensors.torch import load_file, save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    back = load_file(str(tmp))
    if set(back) != set(state) or any(not torch.equal(back[k], state[k]) for k in state):
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{path}: saved weights do not read back identically")
    os.replace(tmp, path)


def _fmt(v: Any) -> str:
    return "  -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
