"""predict: new images with the run's ONNX model when exported (ONNX Runtime), else torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfx import runs
from nfx.config import RunConfig
from nfx.console import Printer
from nfx.errors import DataError
from nfx.workflows.loading import image_paths, load_run, predict_probs


def predict(run_dir: str | Path, images: list[str], printer: Printer | None = None) -> list[dict[str, Any]]:
    """Predict files with the run's ONNX model when exported (ONNX Runtime), else with torch."""
    printer = printer or Printer()
    paths = image_paths(images)
    run_dir = Path(run_dir)
    onnx_path = run_dir / runs.ONNX
    if onnx_path.is_file():
        from nfx.export.onnx import OnnxPredictor

        predictor = OnnxPredictor(onnx_path)
        info = predictor.info
        cfg = RunConfig.load(runs.require_run(run_dir) / runs.CONFIG)
        probs, bad = predictor.predict_files(paths, cfg.data.cache_dir)
        engine = "onnxruntime"
    else:
        run = load_run(run_dir)
        info = run.info
        probs, bad = predict_probs(run.model, paths, info, run.cfg.data.cache_dir, printer)
        engine = "torch"
    bad_of = dict(bad)
    if paths and len(bad_of) == len(paths):
        first = paths[0]
        raise DataError(f"none of the {len(paths)} image(s) could be read (first: {first}: {bad_of[first]}); "
                        "fix or re-export them")
    out = []
    for p, pr in zip(paths, probs):
        if p in bad_of:
            out.append({"file": p, "error": bad_of[p]})
            continue
        k = int(pr.argmax())
        out.append({"file": p, "prediction": info.classes[k], "probability": round(float(pr[k]), 6),
                    "probabilities": {c: round(float(v), 6) for c, v in zip(info.classes, pr)},
                    "engine": engine})
    return out
