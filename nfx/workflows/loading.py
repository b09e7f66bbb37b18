"""A trained run loaded for inference (no fastai): its config, ModelInfo and torch model; the
torch prediction path; the image list of predict/explain arguments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfx import runs
from nfx.config import RunConfig
from nfx.console import Printer
from nfx.errors import DataError, RunError, short_reason
from nfx.records import MODEL_INFO, ModelInfo


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: RunConfig
    info: ModelInfo
    model: Any


def load_run(run_dir: str | Path) -> LoadedRun:
    """A run folder's model; for a --folds parent, the fold ensemble (nfx.models.ensemble)."""
    if (Path(run_dir) / runs.FOLDS).is_file():
        return _load_folds(Path(run_dir))
    run_dir = runs.require_run(Path(run_dir), runs.WEIGHTS, MODEL_INFO)
    cfg = RunConfig.read_run(run_dir / runs.CONFIG)
    info = ModelInfo.read(run_dir)
    from safetensors.torch import load_file

    from nfx.models.factory import build_for_inference

    model = build_for_inference(info.arch, info.num_classes)
    try:
        state = load_file(str(run_dir / runs.WEIGHTS))
        model.load_state_dict(state)
    except Exception as e:
        raise RunError(f"{run_dir / runs.WEIGHTS}: could not be loaded ({short_reason(e)}); re-run training") from e
    model.eval()
    return LoadedRun(run_dir, cfg, info, model)


def load_folds(parent: Path) -> list[LoadedRun]:
    """Each fold run of a --folds parent, in order; one line naming an unfinished fold otherwise."""
    from nfx.workflows.folds import fold_dir

    parent = runs.require_run(parent, MODEL_INFO)
    k = int(RunConfig.read_run(parent / runs.CONFIG).train.folds or 0)
    unfinished = [f for f in range(1, k + 1) if not (fold_dir(parent, f) / runs.WEIGHTS).is_file()]
    if unfinished:
        raise RunError(f"{parent}: fold {unfinished[0]} has not finished; finish it with `nfx finetune --resume {parent}`")
    return [load_run(fold_dir(parent, f)) for f in range(1, k + 1)]


def _load_folds(parent: Path) -> LoadedRun:
    from nfx.models.ensemble import FoldEnsemble

    folds = load_folds(parent)
    return LoadedRun(parent, RunConfig.read_run(parent / runs.CONFIG), ModelInfo.read(parent),
                     FoldEnsemble([r.model for r in folds]).eval())


def predict_probs(model, paths: list[str], info: ModelInfo, cache_dir: str | None,
                  printer: Printer, bs: int = 32) -> tuple[Any, list[tuple[str, str]]]:
    """Softmax probabilities for files (through the same decode/resize/normalise path)."""
    import torch

    from nfx.data.cache import predict_files

    device = next(model.parameters()).device

    def forward(x):
        return torch.softmax(model(torch.from_numpy(x).to(device)).float(), 1).cpu().numpy()

    # one bar, two passes over the files: decoding (cache), then prediction
    with torch.inference_mode(), printer.progress(2 * len(paths), "decoding + predicting") as bar:
        return predict_files(paths, forward, spec=info.input, n_classes=info.num_classes, cache_dir=cache_dir,
                             bs=bs, on_decoded=bar.advance, on_batch=bar.advance)


def image_paths(images: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files and folders given on the command line → (image files, [(other file, reason)]).
    Folders are walked as ingest walks them (nfx.data.discover.walk_files)."""
    from nfx.data.discover import walk_files

    paths: list[str] = []
    skipped: list[tuple[str, str]] = []
    for im in images:
        p = Path(im)
        if p.is_dir():
            ok, other = walk_files(p)
            paths += [str(f) for f in ok]
            skipped += other
        elif p.is_file():
            paths.append(str(p))
        else:
            raise DataError(f"{im}: no such file or folder; pass image files or folders of images")
    if not paths:
        raise DataError(f"no image files found in {', '.join(images)}"
                        + (f" ({len(skipped)} other file(s), e.g. {skipped[0][0]})" if skipped else ""))
    return paths, skipped
