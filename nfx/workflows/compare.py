"""`nfx compare DATA`: does a normalizer-free net make `--accum k` at a small micro-batch behave
like one true batch of the same size, while a BatchNorm net degrades?

A grid of ordinary `nfx finetune` runs — model × micro-batch (with `--accum` keeping the
effective batch fixed) × AGC on/off × seed — each in its own child process, so that every cell's
peak memory is that process's own (peak RSS from `os.wait4`; on CUDA the peak allocated GPU
memory nfx records in metrics.json). Per cell: last-epoch validation accuracy and ROC AUC,
training images/s (the training passes only), peak memory. Every finished cell is kept
(`cells/<cell>.json`), so an interrupted comparison resumes where it stopped. Writes
compare.json, compare.csv and compare.png into the output folder. With `folds`, every cell is a
k-fold cross-validation and its accuracy / ROC AUC are out-of-fold (`nfx evaluate PARENT` in a child),
with the patient-bootstrap interval of the ROC AUC.

Imports no fastai/torch itself: the training happens in the children.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nfx import runs
from nfx.config import BN_MODES
from nfx.errors import ConfigError, RunError

CELLS = "cells"
RESULT, TABLE, PLOT = "compare.json", "compare.csv", "compare.png"


@dataclass(frozen=True)
class CompareConfig:
    data: str
    models: tuple[str, ...] = ("nf_resnet26", "resnet26")
    micro_batches: tuple[int, ...] = (4, 8, 32)
    effective_batch: int = 32
    agc: tuple[bool, ...] = (True, False)
    seeds: tuple[int, ...] = (0, 1, 2)
    size: int = 64
    epochs: int = 6
    pretrained: bool = False
    out: str = "runs"
    name: str = "compare"
    extra: tuple[str, ...] = field(default_factory=tuple)  # further `nfx finetune` options, as given
    folds: int | None = None  # each cell a k-fold cross-validation: its metrics out-of-fold, with a CI
    # BatchNorm statistics ("train" | "frozen", `nfx finetune --bn`); "frozen" cells only for nets with BatchNorm
    bn: tuple[str, ...] = ("train",)

    def validate(self) -> CompareConfig:
        if not self.models:
            raise ConfigError("--models: give at least one architecture, e.g. nf_resnet26,resnet26")
        for m in self.micro_batches:
            if m < 1 or self.effective_batch % m:
                raise ConfigError(f"--micro-batches {m}: must divide --effective-batch {self.effective_batch} "
                                  "(the effective batch is kept fixed by --accum = effective / micro)")
        if not self.seeds or not self.agc:
            raise ConfigError("--seeds and --agc need at least one value each")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1 (got {self.epochs})")
        if self.size < 32:
            raise ConfigError(f"--size must be >= 32 px (got {self.size})")
        if not self.bn or set(self.bn) - set(BN_MODES):
            raise ConfigError(f"--bn {','.join(self.bn)}: expected train, frozen or train,frozen")
        if self.folds is not None and self.folds < 2:
            raise ConfigError(f"--folds must be >= 2 (got {self.folds})")
        return self

    def cells(self) -> list[Cell]:
        from nfx.models.factory import is_nf  # a name rule: imports no timm/torch

        return [Cell(m, b, self.effective_batch // b, a, s, n)
                for m in self.models for b in self.micro_batches for a in self.agc for n in self.bn
                for s in self.seeds if not (n == "frozen" and is_nf(m))]


@dataclass(frozen=True)
class Cell:
    arch: str
    micro_batch: int
    accum: int
    agc: bool
    seed: int
    bn: str = "train"

    @property
    def name(self) -> str:
        frozen = "-bnfrozen" if self.bn == "frozen" else ""
        return f"{self.arch}-bs{self.micro_batch}x{self.accum}-agc{'on' if self.agc else 'off'}{frozen}-s{self.seed}"


def finetune_args(cfg: CompareConfig, cell: Cell, out_dir: Path) -> list[str]:
    """The `nfx finetune` command line of one cell (AGC λ from the effective batch, as `auto`)."""
    return ["finetune", str(cfg.data), "--arch", cell.arch,
            "--pretrained" if cfg.pretrained else "--no-pretrained",
            "--bs", str(cell.micro_batch), "--accum", str(cell.accum), "--agc", "auto" if cell.agc else "off",
            "--seed", str(cell.seed), "--size", str(cfg.size), "--epochs", str(cfg.epochs),
            *(["--bn", "frozen"] if cell.bn == "frozen" else []),
            "--out", str(out_dir / "runs"), "--name", cell.name,
            *(["--folds", str(cfg.folds)] if cfg.folds else []), *cfg.extra]


def run_cell(cfg: CompareConfig, cell: Cell, out_dir: Path) -> dict[str, Any]:
    """Train one cell in a child process; returns (and keeps) its measurements."""
    done = out_dir / CELLS / f"{cell.name}.json"
    if done.is_file():
        return json.loads(done.read_text())
    run_dir = out_dir / "runs" / cell.name
    if run_dir.exists():  # a cell killed half-way: its folder is incomplete, train it again
        import shutil

        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "nfx", "--quiet", *finetune_args(cfg, cell, out_dir)]
    log = out_dir / CELLS / f"{cell.name}.log"  # a file, not a pipe: a chatty child can never block
    t0 = time.time()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped by wait4 (for its rusage): tell Popen, so it never polls again
    if code != 0:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        raise RunError(f"compare cell {cell.name} failed: {lines[-1] if lines else f'exit code {code}'} "
                       f"(log: {log}; reproduce with: nfx {' '.join(finetune_args(cfg, cell, out_dir))})")
    fold_dirs = [run_dir / f"fold-{f}" for f in range(1, cfg.folds + 1)] if cfg.folds else [run_dir]
    histories = [runs.read_csv(d / runs.HISTORY) for d in fold_dirs]
    history = [h for hs in histories for h in hs]
    metrics = json.loads((fold_dirs[0] / runs.METRICS).read_text())
    last = history[-1]
    n_train = metrics["splits"]["train"]["images"]
    train_s = sum(float(h.get("train_seconds") or h["seconds"]) for h in history)
    clip = [float(h["agc_clip_fraction"]) for h in history if h.get("agc_clip_fraction") not in (None, "")]
    scores: dict[str, Any] = {"accuracy": _f(last.get("valid_accuracy")), "roc_auc": _f(last.get("valid_roc_auc"))}
    if cfg.folds:  # out-of-fold over every image, with the patient-bootstrap interval (in a child too)
        done_eval = subprocess.run([sys.executable, "-m", "nfx", "--quiet", "evaluate", str(run_dir), "--json",
                                    "--n-bootstrap", "200"], capture_output=True, text=True)
        if done_eval.returncode != 0:
            raise RunError(f"compare cell {cell.name}: evaluating its folds failed: "
                           f"{(done_eval.stderr.strip().splitlines() or ['?'])[-1]}")
        ev = json.loads(done_eval.stdout)
        scores = {"accuracy": ev["accuracy"], "roc_auc": ev["roc_auc"], "roc_auc_ci": ev.get("roc_auc_ci"),
                  "n_images_out_of_fold": ev["n_images"]}
    res = {
        **asdict(cell), "cell": cell.name, **scores,
        "final_train_loss": _f(last.get("train_loss")),
        "images_per_s": round(n_train * len(history) / train_s, 2) if train_s > 0 else None,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        "peak_gpu_memory_mb": metrics.get("peak_gpu_memory_mb"),
        "agc_lambda": metrics.get("agc"), "agc_clip_fraction_mean": round(statistics.mean(clip), 4) if clip else None,
        "device": metrics.get("device"), "wall_s": round(time.time() - t0, 1),
    }
    runs.atomic_write_json(done, res)
    return res


def summarise(cfg: CompareConfig, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, micro-batch, AGC, BatchNorm mode): mean ± sd over seeds, and the 95 % t-interval
    of the mean over seeds."""
    rows = []
    for arch in cfg.models:
        for b in cfg.micro_batches:
            for a, n in [(a, n) for a in cfg.agc for n in cfg.bn]:
                rs = [r for r in results
                      if (r["arch"], r["micro_batch"], r["agc"], r.get("bn", "train")) == (arch, b, a, n)]
                if not rs:
                    continue
                row: dict[str, Any] = {"arch": arch, "micro_batch": b, "accum": cfg.effective_batch // b,
                                       "agc": a, "bn": n, "seeds": len(rs)}
                for k in ("accuracy", "roc_auc", "images_per_s", "peak_rss_mb", "peak_gpu_memory_mb"):
                    vals = [r[k] for r in rs if r.get(k) is not None and not math.isnan(r[k])]
                    row[k] = round(statistics.mean(vals), 4) if vals else None
                    row[f"{k}_sd"] = round(statistics.stdev(vals), 4) if len(vals) > 1 else None
                    if k in ("accuracy", "roc_auc"):
                        row[f"{k}_ci95"] = _t_interval(vals)
                if cfg.folds and len(rs) == 1:  # one seed: the out-of-fold interval is the spread to quote
                    row["roc_auc_ci"] = rs[0].get("roc_auc_ci")
                rows.append(row)
    return rows


def compare(cfg: CompareConfig, printer=None) -> dict[str, Any]:
    from nfx.console import Printer

    printer = printer or Printer()
    cfg.validate()
    if not Path(cfg.data).is_dir():
        raise ConfigError(f"{cfg.data}: not a folder; pass a data folder with one sub-folder per label")
    out_dir = Path(cfg.out) / cfg.name
    (out_dir / CELLS).mkdir(parents=True, exist_ok=True)
    saved, settings = out_dir / "compare_config.json", _jsonable(cfg)
    if saved.is_file():
        if {"bn": ["train"], **json.loads(saved.read_text())} != settings:  # folders from before --bn: train
            raise ConfigError(f"{out_dir}: holds a comparison with other settings ({saved}); pass another "
                              "--name, or delete the folder to start again")
    else:
        runs.atomic_write_json(saved, settings)
    cells = cfg.cells()
    kept = sum(1 for c in cells if (out_dir / CELLS / f"{c.name}.json").is_file())
    printer.info(f"compare: {len(cells)} cells ({len(cfg.models)} models × {len(cfg.micro_batches)} micro-batches "
                 f"× {len(cfg.agc)} AGC" + (f" × BatchNorm {'/'.join(cfg.bn)}" if cfg.bn != ("train",) else "")
                 + f" × {len(cfg.seeds)} seeds), effective batch {cfg.effective_batch}; "
                 f"{kept} already done in {out_dir}")
    results = []
    with printer.progress(len(cells), "compare") as bar:
        for c in cells:
            results.append(run_cell(cfg, c, out_dir))
            bar.advance(1)
    rows = summarise(cfg, results)
    out = {"config": settings, "rows": rows, "cells": results, "device": results[0].get("device")}
    runs.atomic_write_json(out_dir / RESULT, out)
    runs.atomic_write_csv(out_dir / TABLE, rows)
    runs.atomic_write_bytes(out_dir / PLOT, plot(cfg, rows))
    out["out_dir"] = str(out_dir)
    return out


def plot(cfg: CompareConfig, rows: list[dict[str, Any]]) -> bytes:
    """Accuracy and ROC AUC against micro-batch (log scale), one line per model × AGC, ±sd bars."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, key, title in ((axes[0], "accuracy", "validation accuracy"), (axes[1], "roc_auc", "validation ROC AUC")):
        for arch in cfg.models:
            for a, n in [(a, n) for a in cfg.agc for n in cfg.bn]:
                rs = [r for r in rows if r["arch"] == arch and r["agc"] == a and r.get("bn", "train") == n
                      and r.get(key) is not None]
                if not rs:
                    continue
                ax.errorbar([r["micro_batch"] for r in rs], [r[key] for r in rs],
                            yerr=[r.get(f"{key}_sd") or 0 for r in rs], marker="o" if n == "train" else "s",
                            capsize=3, linestyle="-" if a else "--",
                            label=f"{arch}, AGC {'on' if a else 'off'}" + (", BN frozen" if n == "frozen" else ""))
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(cfg.micro_batches), [str(b) for b in cfg.micro_batches])
        ax.set_xlabel(f"micro-batch (accum = {cfg.effective_batch} / micro-batch)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"effective batch {cfg.effective_batch}, {cfg.epochs} epochs, {cfg.size} px, "
                 f"mean ± sd over {len(cfg.seeds)} seeds")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# two-sided 97.5 % quantiles of Student's t by degrees of freedom (scipy-free: compare imports no heavy module)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _t_interval(vals: list[float]) -> list[float] | None:
    """95 % interval of the mean over seeds (Student's t); None for fewer than two values."""
    if len(vals) < 2:
        return None
    half = _T975.get(len(vals) - 1, 1.96) * statistics.stdev(vals) / math.sqrt(len(vals))
    m = statistics.mean(vals)
    return [round(m - half, 4), round(m + half, 4)]


def _f(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x


def _jsonable(cfg: CompareConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return json.loads(json.dumps(d))  # tuples → lists, as read back from the file
