"""export: the run's model to ONNX, verified against torch (nfx.export.onnx), and the model
card MODEL.md (nfx.export.card) from the run folder's own files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfx import runs
from nfx.console import Printer
from nfx.workflows.loading import load_run


def export(run_dir: str | Path, printer: Printer | None = None, tolerance: float = 1e-4) -> dict[str, Any]:
    printer = printer or Printer()
    run = load_run(run_dir)
    from nfx.export.card import render
    from nfx.export.onnx import export_onnx

    out = run.run_dir / runs.ONNX
    runs.remove_stale_temps(run.run_dir)  # left by an export that was killed (its files are whole)
    report = export_onnx(run.model, run.info, out, tolerance=tolerance)
    result = {"onnx": str(out), "tolerance": tolerance, **report}
    evaluation = runs.read_json(run.run_dir / runs.EVALUATION)
    if evaluation is None:
        printer.note("not evaluated yet: MODEL.md carries training's validation figures only; "
                     f"run `nfx evaluate {run.run_dir}` and export again for metrics with intervals")
    card = render(run.info.to_json(), run.cfg.to_dict(), runs.read_json(run.run_dir / runs.METRICS) or {},
                  evaluation, result)
    runs.atomic_write_text(run.run_dir / runs.MODEL_CARD, card)
    result["model_card"] = str(run.run_dir / runs.MODEL_CARD)
    return result


