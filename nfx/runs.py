"""One run folder and atomic writes: every file name of a run folder is defined here.

A run folder holds: config.json, env.json, splits.csv, split_summary.json, bad_files.csv (if
any), model.json, model.safetensors, history.csv, lr_find.{csv,png} (--lr-find), metrics.json,
checkpoints/{last.pt, best.safetensors}; after evaluate: evaluation.json, predictions.csv, valid_scores.json,
report.md, report.html, plots/*.png; after export: model.onnx, MODEL.md (model card).
Everything is written through a temp file and renamed, so a killed run never leaves a
half-written artifact.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nfx.errors import RunError

CONFIG = "config.json"
ENV = "env.json"
SPLITS = "splits.csv"
BAD_FILES = "bad_files.csv"
WEIGHTS = "model.safetensors"
HISTORY = "history.csv"
LR_FIND_CSV = "lr_find.csv"  # --lr-find: the range test's curve (nfx.train.lr_find)
LR_FIND_PNG = "lr_find.png"
METRICS = "metrics.json"
EVALUATION = "evaluation.json"
PREDICTIONS = "predictions.csv"
REPORT = "report.md"
ONNX = "model.onnx"
MODEL_CARD = "MODEL.md"
MODEL_INFO = "model.json"
SPLIT_SUMMARY = "split_summary.json"
FOLDS = "folds.csv"  # a --folds parent's record: path, label, patient, fold, split (nfx.workflows.folds)
COPY_SIGNATURES = "copy_signatures.npy"  # float16 N×16×16, one per row of splits.csv (nfx.data.copies)
REPORT_HTML = "report.html"
VALID_SCORES = "valid_scores.json"
PLOTS = "plots"
CKPT_DIR = "checkpoints"
LAST = "last.pt"  # inside CKPT_DIR
BEST = "best.safetensors"  # inside CKPT_DIR


_TMP_IDS = itertools.count()


@contextlib.contextmanager
def atomic_path(path: Path, fsync: bool = True) -> Iterator[Path]:
    """The one atomic writer: yields a unique temp path beside `path` for the caller (or a
    library: safetensors, ONNX, Pillow, numpy) to write; on success the file is fsynced and
    renamed over `path`, so readers see the old file or the new one, never half of either; on
    any failure (or a kill) the temp file is removed and `path` is untouched. `fsync=False`
    for disposable files (decoded-image cache entries), where one fsync per image costs more
    than a rebuilt entry."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique per process, thread and call; created with open(), so the umask decides the
    # permissions as for any other file (mkstemp would force 0600 on a shared cache)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{next(_TMP_IDS)}.tmp")
    open(tmp, "xb").close()
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None:  # libraries (safetensors, torch.save) raise ENOSPC without a name
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temp files `atomic_path` left in `folder` (not below it) when its process was
    killed (SIGKILL skips the cleanup): only those whose writing process is gone, so a live
    writer in another process is never disturbed. Returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        parts = tmp.name.rsplit(".", 4)  # .<name>.<pid>.<thread>.<n>.tmp
        try:
            pid = int(parts[-4])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # the writer is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    # surrogateescape: a file name that is not valid UTF-8 is written as its original bytes
    # (and read back by read_csv the same way), so splits.csv still names the real file
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file of a run folder, or `default` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_csv(path: Path, rows: list[dict[str, Any]], fieldnames: list[str] | None = None) -> None:
    buf = io.StringIO()
    names = fieldnames or (list(rows[0].keys()) if rows else [])
    w = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def new_run_dir(out: str, name: str | None, arch: str) -> Path:
    """Create the run folder exclusively (mkdir without exist_ok: of two runs started with one
    --name, the second fails instead of mixing its files into the first). Without --name a
    timestamped name gets a -1, -2 … suffix until a new folder could be created."""
    base = Path(out)
    if base.exists() and not base.is_dir():
        raise RunError(f"{base}: --out is a file, not a folder; pass a folder for the run folders")
    base.mkdir(parents=True, exist_ok=True)
    stem = name or f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1000):
        run = base / (stem if i == 0 else f"{stem}-{i}")
        try:
            run.mkdir()
            return run
        except FileExistsError:
            if name is not None:
                raise RunError(f"{run}: a run folder of that name exists already; pass another --name, "
                               f"continue it with `nfx finetune --resume {run}`, or delete it") from None
    raise RunError(f"{base}: could not create a new run folder for {stem}; clean up old runs")


def require_run(run_dir: Path, *files: str) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: run folder not found; pass the folder `nfx finetune` printed")
    for f in (CONFIG, *files):
        if not (run_dir / f).is_file():
            hint = (
                "the run did not finish training; resume or re-run `nfx finetune`"
                if f == WEIGHTS
                else "it records the run's train/validation split; restore it from a backup or re-run training"
                if f == SPLITS
                else "is this a run folder made by `nfx finetune`?"
            )
            raise RunError(f"{run_dir / f}: missing; {hint}")
    return run_dir


def environment() -> dict[str, Any]:
    """Versions and device, for env.json. Imports torch (already loaded when this is called)."""
    import importlib.metadata as md

    import torch

    from nfx import __version__

    def ver(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    env: dict[str, Any] = {
        "nfx": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {
            p: ver(p)
            for p in ("torch", "torchvision", "fastai", "timm", "albumentations", "pydicom",
                      "numpy", "onnx", "onnxruntime", "scikit-learn")
        },
        "cuda": torch.version.cuda,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if torch.cuda.is_available():
        env["device"] = "cuda"
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env
