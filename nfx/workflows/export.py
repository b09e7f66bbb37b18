"""export: the run's model to ONNX, verified against torch (nfx.export.onnx)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfx import runs
from nfx.console import Printer
from nfx.workflows.loading import load_run


def export(run_dir: str | Path, printer: Printer | None = None, tolerance: float = 1e-4) -> dict[str, Any]:
    printer = printer or Printer()
    run = load_run(run_dir)
    from nfx.export.onnx import export_onnx

    out = run.run_dir / runs.ONNX
    report = export_onnx(run.model, run.info, out, tolerance=tolerance)
    return {"onnx": str(out), **report}
