"""Run state across epochs (fastai wiring): deterministic per-epoch seeding, EMA of the weights,
last/best checkpoints, early stopping, and what `--resume` needs.

Resumability rests on one rule: every source of randomness is re-seeded at the start of each
epoch from (seed, global epoch). An epoch's shuffling and augmentation therefore depend only on
its number, and a run resumed at epoch k replays exactly what the uninterrupted run would have
done. Accumulation windows never span epochs, so no partial gradient has to be saved.

The last checkpoint (`checkpoints/last.pt`: model, optimizer, EMA, history, best-so-far) is
written atomically at the end of every epoch; the best weights by the monitored metric go to
`checkpoints/best.safetensors`. last.pt holds plain types only (tensors, numbers, strings,
lists, dicts: fastai's `L` becomes a list), so it is read with `torch.load(weights_only=True)`:
a crafted checkpoint cannot run code when a run is resumed.
"""

from __future__ import annotations

import io
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback, CancelFitException

from nfx import runs
from nfx.runs import BEST, CKPT_DIR, LAST  # noqa: E402,F401  (re-exported for fit)
from nfx.train.distributed import unwrap


def epoch_seed(seed: int, global_epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(global_epoch) * 7919) % (2**31 - 1)


def skipped(epoch: int, start_epoch: int) -> bool:
    """True for epochs fastai's SkipToEpoch cancels when resuming (their after_epoch still fires):
    those before `start_epoch`, the first epoch of this fit that really runs."""
    return epoch < start_epoch


class EpochSeed(Callback):
    """Contract: before_train (before the train DataLoader builds its iterator), re-seeds python,
    numpy, torch, the loader's shuffling RNG and the albumentations pipeline from (seed, epoch)."""

    order = -20

    def __init__(self, seed: int, epoch_offset: int):
        self.seed, self.offset = seed, epoch_offset

    def before_train(self) -> None:
        s = epoch_seed(self.seed, self.offset + self.epoch)
        random.seed(s)
        np.random.seed(s % (2**32))
        torch.manual_seed(s)
        dl = self.dls.train
        dl.rng = random.Random(s)
        tfm = getattr(dl.dataset, "tfm", None)
        if tfm is not None and hasattr(tfm, "set_random_seed"):
            tfm.set_random_seed(s)


class EMACallback(Callback):
    """Exponential moving average of the weights (timm's ModelEmaV3, with its warm-up so short
    runs are not dominated by the random head: decay_t = min(decay, 1 − (1 + t)^(−2/3))).

    Contract: after_step (only real optimizer steps: accumulation cancels the others before
    step) updates the EMA; validation runs on the EMA weights (swapped in before_validate,
    swapped back after_validate), so history metrics, checkpoints and the saved model are EMA.
    """

    order = 15

    def __init__(self, model: torch.nn.Module, decay: float):
        from timm.utils.model_ema import ModelEmaV3

        self.ema = ModelEmaV3(model, decay=decay, use_warmup=True)
        self.decay = decay
        self.n_updates = 0
        self._backup: dict[str, torch.Tensor] | None = None

    def after_step(self) -> None:
        self.n_updates += 1
        self.ema.update(unwrap(self.learn.model), step=self.n_updates)

    def before_validate(self) -> None:
        if self.n_updates == 0:
            return
        self._backup = {k: v.detach().clone() for k, v in unwrap(self.learn.model).state_dict().items()}
        unwrap(self.learn.model).load_state_dict(self.ema.module.state_dict())

    def after_validate(self) -> None:
        if self._backup is not None:
            unwrap(self.learn.model).load_state_dict(self._backup)
            self._backup = None

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.ema.module.state_dict(), "n_updates": self.n_updates}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(sd["module"])
        self.n_updates = int(sd["n_updates"])

    def weights(self) -> dict[str, torch.Tensor]:
        return self.ema.module.state_dict()


class Checkpointer(Callback):
    """Contract: after_epoch, after EpochLog (60) has appended this epoch's row to `history`:
    tracks the best value of `monitor` (ties broken by the lower valid_loss), saves best weights,
    writes last.pt, and stops the fit (CancelFitException) after `patience` epochs without
    improvement."""

    order = 70

    def __init__(self, run_dir: Path, history: list[dict[str, Any]], monitor: str, patience: int | None,
                 state: dict[str, Any], ema_cb: EMACallback | None, phase: str, phase_offset: int,
                 start_epoch: int = 0):
        self.run_dir, self.history, self.monitor, self.patience = Path(run_dir), history, monitor, patience
        self.state, self.ema_cb, self.phase, self.phase_offset = state, ema_cb, phase, phase_offset
        self.start_epoch = start_epoch

    def after_epoch(self) -> None:
        if skipped(self.epoch, self.start_epoch):
            return
        row = self.history[-1]
        value = row.get(self.monitor)
        improved = False
        if value is not None and isinstance(value, float) and math.isfinite(value):
            best = self.state.get("best_value")
            lower = self.monitor.endswith("loss")
            # Ties (a small validation set saturates ROC AUC at 1.0 early) go to the lower
            # validation loss, i.e. the better-calibrated epoch.
            loss = row.get("valid_loss")
            loss = loss if isinstance(loss, float) and math.isfinite(loss) else math.inf
            tie_better = value == best and loss < self.state.get("best_valid_loss", math.inf)
            if best is None or (value < best if lower else value > best) or (not lower and tie_better):
                improved = True
                self.state.update(best_value=value, best_valid_loss=loss, best_epoch=row["epoch"], bad_epochs=0)
                save_state_dict(self.weights(), self.run_dir / CKPT_DIR / BEST)
        if not improved:
            self.state["bad_epochs"] = self.state.get("bad_epochs", 0) + 1
        self.state["epochs_done"] = self.phase_offset + self.epoch + 1
        self.state["phase"] = self.phase
        self.save_last()
        if self.patience and self.state["bad_epochs"] >= self.patience:
            self.state["early_stopped_at"] = row["epoch"]
            raise CancelFitException()

    def weights(self) -> dict[str, torch.Tensor]:
        return self.ema_cb.weights() if self.ema_cb else unwrap(self.learn.model).state_dict()

    def save_last(self) -> None:
        payload = _plain({
            "state": dict(self.state),
            "history": list(self.history),
            "model": {k: v.detach().cpu() for k, v in unwrap(self.learn.model).state_dict().items()},
            "opt": self.learn.opt.state_dict(),
            "ema": self.ema_cb.state_dict() if self.ema_cb else None,
        })
        buf = io.BytesIO()
        torch.save(payload, buf)  # default protocol: what the weights_only reader expects
        runs.atomic_write_bytes(self.run_dir / CKPT_DIR / LAST, buf.getvalue())


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors, atomically (runs.atomic_path), reloaded once to verify before it replaces
    the previous file."""
    from safetensors.torch import load_file, save_file

    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with runs.atomic_path(path) as tmp:
        save_file(state, str(tmp))
        back = load_file(str(tmp))
        if set(back) != set(state) or any(not torch.equal(back[k], state[k]) for k in state):
            raise RuntimeError(f"{path}: saved weights do not read back identically")


def _plain(obj: Any) -> Any:
    """Containers → dict / list of plain values (fastai's L and tuples become lists), so that
    the unpickler allowed by `weights_only=True` can read every checkpoint nfx writes."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "L":
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass but pickles as numpy
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint value of type {type(obj).__name__} is not a plain type")


def load_last(run_dir: Path) -> dict[str, Any] | None:
    """The resume state, read without running code (`weights_only=True`). A file that is not a
    plain nfx checkpoint (truncated, random bytes, or a pickle asking to import and call
    something) is refused with a RunError instead of being executed."""
    from nfx.errors import RunError, short_reason

    p = Path(run_dir) / CKPT_DIR / LAST
    if not p.is_file():
        return None
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RunError(f"{p}: not a readable nfx checkpoint ({short_reason(e)}); it was not loaded (nfx never unpickles "
                       f"code). Delete it and start the run again with `nfx finetune --config "
                       f"{Path(run_dir) / runs.CONFIG}`") from e
    if not isinstance(ckpt, dict) or not {"state", "history", "model", "opt"} <= set(ckpt):
        raise RunError(f"{p}: not an nfx checkpoint (keys missing); delete it and start the run again")
    return ckpt


def load_opt_state(opt, sd: dict[str, Any]) -> None:
    """fastai's Optimizer.load_state_dict with the hypers back in an L (saved as a plain list)."""
    from fastcore.foundation import L

    opt.load_state_dict({"state": sd["state"], "hypers": L(sd["hypers"])})
