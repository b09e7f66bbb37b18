"""`--lr-find`: the lr range test before training.

fastai's `Learner.lr_find` (an lr growing exponentially from 1e-7 to 10 over a short mock training,
stopped when the smoothed loss passes 4× its minimum; model and optimiser restored afterwards) run
on the run's own Learner — its micro-batch accumulation, AGC, mixed precision, loss and, under the
fine-tune schedule, its frozen body, as the first phase will have them — and fastai's `valley`
suggestion becomes the run's peak lr (under the fine-tune schedule: the head-only warm-up's lr,
halved when the body is unfrozen, as fastai's `fine_tune` does with its `base_lr`).

Under accumulation the test counts optimizer steps, not micro-batches: 100 steps of `accum`
micro-batches each, so a run at `--bs 4 --accum 8` gets as many lr values tried as one at `--bs 32`.
The curve is kept in the run folder (lr_find.csv, lr_find.png) and the lr in config.json.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nfx import runs
from nfx.errors import TrainingError

START_LR, END_LR, STEPS = 1e-7, 10.0, 100


def find_lr(learn, t, run_dir: Path, printer) -> dict[str, Any]:
    """Run the range test on `learn` in the state the first training phase starts from; write the
    curve into `run_dir`; return {"lr": the valley suggestion, "iterations": micro-batches run, ...}."""
    from fastai.callback.schedule import valley

    from nfx.train.checkpoint import CKPT_DIR

    learn.freeze() if t.freeze_epochs else learn.unfreeze()
    # LRFinder saves the model in a temporary folder under learn.path/learn.model_dir (removed after):
    # inside the run folder, never the working directory
    learn.path, learn.model_dir = Path(run_dir), CKPT_DIR
    num_it = STEPS * t.accum
    printer.info(f"lr range test: lr {START_LR:g} → {END_LR:g} over {STEPS} optimizer steps"
                 + (f" ({num_it} micro-batches)" if t.accum > 1 else "") + ", weights restored afterwards")
    suggested = learn.lr_find(start_lr=START_LR, end_lr=END_LR, num_it=num_it, suggest_funcs=(valley,),
                              show_plot=False)
    lrs = [float(x) for x in learn.recorder.lrs]
    losses = [float(x) for x in learn.recorder.losses]
    runs.atomic_write_csv(run_dir / runs.LR_FIND_CSV, [{"lr": a, "smoothed_loss": b} for a, b in zip(lrs, losses)],
                          ["lr", "smoothed_loss"])
    lr = float(suggested.valley)
    if not (math.isfinite(lr) and lr > 0):
        raise TrainingError(f"{run_dir / runs.LR_FIND_CSV}: the lr range test gave no usable lr ({lr}); "
                            "pass --lr instead of --lr-find")
    from nfx.evaluate.plots import lr_find_png

    runs.atomic_write_bytes(run_dir / runs.LR_FIND_PNG, lr_find_png(lrs, losses, lr))
    printer.info(f"lr range test: {len(lrs)} micro-batches, valley suggestion lr {lr:.3g}")
    return {"lr": lr, "suggestion": "valley", "iterations": len(lrs), "planned_iterations": num_it,
            "start_lr": START_LR, "end_lr": END_LR}
