"""Commands on a trained run: evaluate, explain, export, predict."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from nfx.cli.app import app, boundary, printer
from nfx.console import show_evaluation


@app.command()
@boundary
def evaluate(
    run_dir: Path = typer.Argument(..., help="Run folder made by `nfx finetune`."),
    data: Path | None = typer.Argument(None, help="Evaluate on this folder instead of the run's validation split."),
    split: str = typer.Option("valid", "--split", help="Which split of the run to evaluate: valid or test."),
    tta: bool = typer.Option(False, "--tta", help="Average predictions over a horizontal flip."),
    threshold: float | None = typer.Option(None, "--threshold", help="Probability threshold for the positive class [default: 0.5]."),
    target_sensitivity: float | None = typer.Option(None, "--target-sensitivity", help="Use the highest threshold reaching this sensitivity on the validation split, e.g. 0.9."),
    per_patient: bool = typer.Option(False, "--per-patient", help="Also report metrics with one row per patient (mean of image probabilities)."),
    n_bootstrap: int = typer.Option(1000, "--n-bootstrap", help="Patient bootstrap resamples for the 95% intervals."),
    as_json: bool = typer.Option(False, "--json", help="Print evaluation.json to stdout."),
) -> None:
    """Metrics with patient-level bootstrap CIs, calibration, plots → evaluation.json, report.html."""

    from nfx import api

    p = printer()
    ev = api.evaluate(run_dir, str(data) if data else None, p, threshold=threshold, n_bootstrap=n_bootstrap,
                      split=split, tta=tta, target_sensitivity=target_sensitivity, per_patient=per_patient)
    if as_json:
        sys.stdout.write(json.dumps(ev, indent=2) + "\n")
        return
    show_evaluation(p, ev, run_dir)


@app.command()
@boundary
def explain(
    run_dir: Path = typer.Argument(..., help="Run folder made by `nfx finetune`."),
    images: list[str] = typer.Argument(..., help="Image files or folders."),
    out: Path = typer.Option(Path("gradcam"), "--out", help="Folder for the Grad-CAM overlays."),
    target_class: str | None = typer.Option(None, "--class", help="Explain this class [default: the predicted one]."),
) -> None:
    """Grad-CAM overlays (pytorch-grad-cam) on the model's last feature stage."""

    from nfx import api

    p = printer()
    res = api.explain(run_dir, images, out, p, target_class=target_class)
    for r in res:
        if "error" in r:
            p.warn(f"{r['file']}: {r['error']}")
        else:
            typer.echo(f"{r['file']}\t{r['prediction']}\t{r['probability']:.3f}\t{r['overlay']}")
    p.table("explain", [("overlays", out), ("layer", res[0].get("layer") if res else "")])


@app.command()
@boundary
def export(
    run_dir: Path = typer.Argument(..., help="Run folder made by `nfx finetune`."),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Export to ONNX (the only format so far)."),
) -> None:
    """Export to ONNX (dynamic batch, metadata), verified against torch through ONNX Runtime; write MODEL.md."""

    from nfx import api
    from nfx.errors import ConfigError

    if not onnx:
        raise ConfigError("nothing to export: --onnx is the only format so far")
    p = printer()
    r = api.export(run_dir, p)
    p.table(
        "export",
        [("onnx", r["onnx"]), ("max |onnxruntime − torch|", f"{r['max_abs_diff']:.2e}"),
         ("input", f"N×3×{r['input_size']}×{r['input_size']}"), ("model card", r["model_card"]),
         ("next", f"nfx predict {run_dir} IMAGES... --out predictions.csv")],
    )


@app.command()
@boundary
def predict(
    model: Path = typer.Argument(..., help="Run folder (its model.onnx when exported, else torch) or a bare .onnx file."),
    images: list[str] = typer.Argument(..., help="Image files or folders (walked like ingest)."),
    out: Path | None = typer.Option(None, "--out", help="Write the predictions to this CSV."),
    backend: str = typer.Option("auto", "--backend", help="auto, onnx or torch [default: auto = ONNX Runtime "
                                "when exported, else torch]."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines to stdout."),
) -> None:
    """Predict new images; unreadable files are reported, not fatal."""

    from nfx import api

    p = printer()
    res = api.predict(model, images, p, backend=backend, out=out)
    bad = [r for r in res if "error" in r]
    if as_json:
        for r in res:
            sys.stdout.write(json.dumps(r) + "\n")
        return
    if out is None:
        for r in res:
            if "error" not in r:
                typer.echo(f"{r['file']}\t{r['prediction']}\t{r['probability']:.3f}")
    for r in bad[:20]:
        p.warn(f"{r['file']}: {r['error']}")
    if len(bad) > 20:
        p.warn(f"… and {len(bad) - 20} more file(s) skipped" + (f" (all listed in {out})" if out else ""))
    engine = next((r["engine"] for r in res if "engine" in r), "")
    rows = [("images", len(res) - len(bad)), ("skipped", len(bad)), ("engine", engine)]
    if out is not None:
        rows.append(("predictions", out))
    p.table("predict", rows)
