"""Commands on data: inspect, sample-data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from nfx.cli.app import app, boundary, printer
from nfx.console import show_inspect


@app.command()
@boundary
def inspect(
    data: Path = typer.Argument(..., help="Data folder: one sub-folder per label (optionally under train/ valid/ test/)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON to stdout."),
    labels: Path | None = typer.Option(None, "--labels", help="CSV with path,label[,patient][,split] columns instead of label folders."),
    patient_regex: str | None = typer.Option(None, "--patient-regex", help="Regex on file names; group 1 = patient id (when no DICOM PatientID)."),
    frame: int | None = typer.Option(None, "--frame", help="Frame to use from multi-frame DICOMs; single-frame files give their only frame (default: report multi-frame files as bad)."),
    workers: int | None = typer.Option(None, "--workers", help="Decoding workers [default: all cores]."),
) -> None:
    """Describe a dataset: classes, patients, modalities, bit depths, sizes, bad files, duplicates."""

    from nfx import api

    p = printer()
    r = api.inspect(data, p, patient_regex=patient_regex, labels=labels, frame=frame, workers=workers)
    if as_json:
        sys.stdout.write(json.dumps(r, indent=2) + "\n")
        return
    show_inspect(p, r)


@app.command("sample-data")
@boundary
def sample_data(
    out: Path = typer.Argument(Path("sample_data"), help="Where to write the synthetic dataset."),
    patients: int = typer.Option(80, "--patients", help="Number of synthetic patients (2 eyes each)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """(Re)generate the synthetic fundus-like sample dataset (PNG + DICOM)."""

    from nfx.data.synthetic import generate

    c = generate(out, n_patients=patients, seed=seed)
    printer().table("sample data", [("folder", out), ("images per format", c["images"]),
                                     ("patients", c["patients"]), ("per class", c["per_class"])])
