"""The fine-tuning sequence: head-only warm-up (body frozen), then the whole network with
discriminative learning rates, each phase a one-cycle schedule; optional EMA, early stopping,
best/last checkpoints, resume. Writes history.csv after every epoch and model.safetensors at the
end (the last epoch, or the best by the monitored metric with --keep best / --patience; reloaded
once to verify).
"""

from __future__ import annotations

import math
import os
from typing import Any

from nfx import runs
from nfx.train.callbacks import EpochLog, RichProgress
from nfx.train.checkpoint import (
    BEST,
    CKPT_DIR,
    Checkpointer,
    EMACallback,
    EpochSeed,
    load_opt_state,
    save_state_dict,
)
from nfx.train.job import TrainingJob
from nfx.train.learner import build_learner
from nfx.variants import OPTIMIZERS

HISTORY_FIELDS = ["epoch", "phase", "train_loss", "valid_loss", "valid_accuracy", "valid_roc_auc",
                  "lr", "agc_clip_fraction", "seconds", "train_seconds"]


def default_monitor(num_classes: int) -> str:
    return "valid_roc_auc" if num_classes == 2 else "valid_loss"


def fit(job: TrainingJob, printer) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train `job` (nfx.train.job): its config sections say how; returns (history rows, final metrics)."""
    from fastai.torch_core import set_seed

    from nfx.data.dataloaders import class_weights, make_dataloaders

    cfg, model, device, run_dir, resume = job.cfg, job.model, job.device, job.run_dir, job.resume
    num_classes, train, valid = job.num_classes, job.train, job.valid
    t = cfg.train
    if not t.resolved:
        raise ValueError("fit() needs a resolved schedule: call nfx.config.resolve_schedule first")
    set_seed(t.seed, reproducible=True)
    workers = cfg.data.num_workers
    if workers is None:
        workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    dls = make_dataloaders((train.entries, train.labels), (valid.entries, valid.labels), bs=t.bs,
                           mean=job.preprocessing.mean, std=job.preprocessing.std, aug=cfg.data.aug,
                           flip=cfg.data.flip, num_workers=workers, device=device, seed=t.seed,
                           balance=t.balance, n_classes=num_classes, accum=t.accum * t.world_size)
    w = build_learner(dls, model, num_classes=num_classes, wd=t.wd, precision=job.precision,
                      accum=t.accum, agc=t.agc, device=device,
                      class_weights=class_weights(train.labels, num_classes) if t.balance == "loss" else None,
                      agc_mode=t.agc_mode, persample_chunk=t.persample_chunk, compile_model=t.compile,
                      persample_impl=t.persample_impl, note=printer.note,
                      label_smoothing=t.label_smoothing, mixup=t.mixup, cutmix=t.cutmix,
                      opt_func=OPTIMIZERS[t.optimizer].build())
    learn = w.learn
    from nfx.train import distributed

    if distributed.is_distributed():  # torch DDP through fastai's DistributedTrainer (accelerate)
        learn.add_cb(distributed.trainer_callback(device))
    if t.bn == "frozen":
        from nfx.train.callbacks import FrozenBatchNorm

        learn.add_cb(FrozenBatchNorm())
    monitor = t.monitor or default_monitor(num_classes)
    history: list[dict[str, Any]] = []
    state: dict[str, Any] = {"monitor": monitor}  # the checkpoints carry it: a resume continues it
    if t.lr_find and resume is None:  # a resumed run goes on with the lr its config.json recorded
        from dataclasses import replace

        from nfx.train.lr_find import find_lr

        state["lr_find"] = find_lr(learn, t, run_dir, printer)  # before EMA: its steps must not reach the average
        t = replace(t, lr=state["lr_find"]["lr"])
        job.cfg = cfg = replace(cfg, train=t)
        cfg.save(run_dir / runs.CONFIG)  # resume, --config and MODEL.md see the lr the run trained with
        set_seed(t.seed, reproducible=True)
        for cb, counter in ((w.accum_cb, "n_steps"), (w.agc_cb, "n_calls")):  # metrics count training steps only
            if cb is not None:
                setattr(cb, counter, 0)
    ema_cb = EMACallback(learn.model, t.ema) if t.ema else None
    if ema_cb:
        learn.add_cb(ema_cb)
    done = 0
    if resume:
        learn.model.load_state_dict(resume["model"])
        if ema_cb and resume.get("ema"):
            ema_cb.load_state_dict(resume["ema"])
        history.extend(resume["history"])
        state.update(resume["state"])
        done = int(state.get("epochs_done", 0))
        printer.info(f"resuming after epoch {done} of {t.freeze_epochs + t.epochs}")

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
            from nfx.variants import AGC_MODES

            what = AGC_MODES[t.agc_mode].clipped
            printer.warn(
                f"AGC clipped more than 95% of {what} at every step of epoch {row['epoch']} "
                f"(λ={t.agc}); raise --agc or lower --lr"
            )

    phases = []
    if t.freeze_epochs:
        phases.append(("frozen", t.freeze_epochs, t.lr, 0))
    if t.epochs:
        head_lr = t.lr / 2 if t.freeze_epochs else t.lr
        phases.append(("unfrozen", t.epochs, slice(head_lr / t.body_lr_div, head_lr), t.freeze_epochs))

    opt_restored = resume is None
    for phase, n_epoch, lr, offset in phases:
        if state.get("early_stopped_at") or done >= offset + n_epoch:
            continue
        learn.freeze() if phase == "frozen" else learn.unfreeze()
        start = max(0, done - offset)
        if not opt_restored:
            # freeze()/unfreeze() clear the optimizer state at a phase change, so the saved state
            # only carries over when the run stopped inside this same phase.
            if state.get("phase") == phase:
                load_opt_state(learn.opt, resume["opt"])
            opt_restored = True
        cbs = [EpochSeed(t.seed, offset),
               EpochLog(phase, on_epoch, w.agc_cb, printer, offset, start_epoch=start),
               Checkpointer(run_dir, history, monitor, t.patience, state, ema_cb, phase, offset, start_epoch=start),
               RichProgress(printer, f"training ({phase})")]
        try:
            learn.fit_one_cycle(n_epoch, lr, cbs=cbs, start_epoch=start)
        finally:
            cbs[-1].close()
        done = int(state.get("epochs_done", done))

    if state.get("early_stopped_at"):
        printer.note(f"early stopping after epoch {state['early_stopped_at']}: no {monitor} improvement "
                     f"for {t.patience} epochs")
    best = run_dir / CKPT_DIR / BEST
    final_weights = ema_cb.weights() if ema_cb else learn.model.state_dict()
    selected = history[-1]["epoch"] if history else None
    if t.kept == "best" and best.is_file() and state.get("best_epoch") is not None:
        from safetensors.torch import load_file

        final_weights = load_file(str(best))
        selected = state["best_epoch"]
    save_state_dict(final_weights, run_dir / runs.WEIGHTS)
    if distributed.is_distributed():
        distributed.report(learn.model, w.accum_cb.n_steps if w.accum_cb else None, len(dls.train) * t.bs)
    row = next((h for h in history if h["epoch"] == selected), history[-1])
    final = {k: row.get(k) for k in ("valid_accuracy", "valid_roc_auc", "valid_loss", "train_loss")}
    final.update(
        epochs_run=len(history),
        selected_epoch=selected,
        kept=t.kept,
        best_epoch=state.get("best_epoch"),
        monitor=monitor,
        early_stopped_at=state.get("early_stopped_at"),
        ema=t.ema,
        optimizer_steps=w.accum_cb.n_steps if w.accum_cb else None,
        agc_calls=w.agc_cb.n_calls if w.agc_cb else 0,
        persample_impl=getattr(w.agc_cb, "impl", None),
    )
    if state.get("lr_find"):  # kept in the checkpoints' state: a resumed run reports it too
        final["lr_find"] = state["lr_find"]
    return history, final


def _fmt(v: Any) -> str:
    return "  -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
