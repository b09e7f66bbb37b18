"""predict: new images with a trained model — a run folder (ONNX Runtime when exported, else
torch) or a bare `.onnx` file carrying nfx's metadata.

Contract:
- MODEL is a run folder or an `.onnx` file. `backend`: auto (a run's model.onnx when present,
  else torch; ONNX for a bare file), onnx, or torch (a run folder only: a bare .onnx has no
  torch weights).
- The ONNX backend preprocesses from the file's metadata alone (size, resize policy, DICOM
  frame, mean/std) and imports neither fastai nor timm (tests check sys.modules).
- Folders are walked as ingest walks them: supported images are predicted; other visible
  files, and files that cannot be decoded, come back as rows with an `error` — reported, not
  fatal. Only when no file at all could be read is it an error.
- `out`: a CSV (file, prediction, probability, p_<class>..., engine, error), written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfx import runs
from nfx.console import Printer
from nfx.errors import DataError, RunError
from nfx.workflows.loading import image_paths, load_run, predict_probs

BACKENDS = ("auto", "onnx", "torch")


def _engine(model: Path, backend: str) -> tuple[str, Path]:
    """(engine, path): which backend runs, and the ONNX file or run folder it runs from."""
    if backend not in BACKENDS:
        raise DataError(f"unknown --backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if model.is_file():
        if model.suffix.lower() != ".onnx":
            raise RunError(f"{model}: not a run folder or an .onnx file; pass a folder made by "
                           "`nfx finetune` or a model.onnx made by `nfx export --onnx`")
        if backend == "torch":
            raise RunError(f"{model}: a bare .onnx file has no torch weights; pass its run folder for "
                           "--backend torch, or use --backend onnx")
        return "onnxruntime", model
    run_dir = runs.require_run(model)
    onnx_path = run_dir / runs.ONNX
    if backend == "onnx" and not onnx_path.is_file():
        raise RunError(f"{onnx_path}: not exported yet; run `nfx export {run_dir} --onnx` first, "
                       "or use --backend torch")
    if backend == "torch" or not onnx_path.is_file():
        return "torch", run_dir
    return "onnxruntime", onnx_path


def predict(model: str | Path, images: list[str], printer: Printer | None = None, *, backend: str = "auto",
            out: str | Path | None = None, cache_dir: str | None = None) -> list[dict[str, Any]]:
    """Predict image files/folders; one row per file (predictions, or an `error` for a file
    that could not be used), in the order given. Writes `out` (CSV) when given."""
    printer = printer or Printer()
    model = Path(model)
    if not model.exists():
        raise RunError(f"{model}: no such run folder or .onnx file; pass a folder made by `nfx finetune`")
    engine, source = _engine(model, backend)
    paths, skipped = image_paths(images)
    if engine == "onnxruntime":
        from nfx.export.onnx import OnnxPredictor

        predictor = OnnxPredictor(source)
        info = predictor.info
        if cache_dir is None and source.parent.joinpath(runs.CONFIG).is_file():
            from nfx.config import RunConfig

            cache_dir = RunConfig.read_run(source.parent / runs.CONFIG).data.cache_dir
        with printer.progress(2 * len(paths), "decoding + predicting") as bar:
            probs, bad = predictor.predict_files(paths, cache_dir, on_decoded=bar.advance, on_batch=bar.advance)
    else:
        run = load_run(source)
        info = run.info
        probs, bad = predict_probs(run.model, paths, info, cache_dir or run.cfg.data.cache_dir, printer)
    bad_of = dict(bad)
    if len(bad_of) == len(paths):
        first = paths[0]
        raise DataError(f"none of the {len(paths)} image(s) could be read (first: {first}: {bad_of[first]}); "
                        "fix or re-export them")
    rows: list[dict[str, Any]] = []
    for p, pr in zip(paths, probs):
        if p in bad_of:
            rows.append({"file": p, "error": bad_of[p]})
            continue
        k = int(pr.argmax())
        rows.append({"file": p, "prediction": info.classes[k], "probability": round(float(pr[k]), 6),
                     "probabilities": {c: round(float(v), 6) for c, v in zip(info.classes, pr)},
                     "engine": engine})
    rows += [{"file": f, "error": why} for f, why in skipped]
    if out is not None:
        write_csv(Path(out), rows, info.classes)
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]], classes: list[str]) -> None:
    """predictions CSV: one row per file, p_<class> columns as in a run's predictions.csv."""
    if path.is_dir():
        raise DataError(f"--out {path}: is a folder; pass a file name such as {path / 'predictions.csv'}")
    names = ["file", "prediction", "probability", *[f"p_{c}" for c in classes], "engine", "error"]
    flat = []
    for r in rows:
        row = {k: r.get(k, "") for k in ("file", "prediction", "probability", "engine", "error")}
        row.update({f"p_{c}": r["probabilities"][c] for c in classes} if "probabilities" in r else {})
        flat.append(row)
    try:
        runs.atomic_write_csv(path, flat, names)
    except OSError as e:
        raise DataError(f"--out {path}: cannot be written ({e.strerror or e}); pick a writable path") from e
