"""inspect: describe a data folder without training (nfx.data.inspect does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfx.console import Printer


def inspect(data: str | Path, printer: Printer | None = None, patient_regex: str | None = None,
            labels: str | Path | None = None, frame: int | None = None,
            workers: int | None = None) -> dict[str, Any]:
    """Describe a data folder without training: classes × images × patients, modalities,
    photometric interpretations, bit depths, sizes, bad files, duplicates, imbalance.
    Returns the report dict (stable keys, see nfx.data.inspect)."""
    printer = printer or Printer()
    from nfx.data.inspect import inspect_data

    with printer.progress(None, "decoding every file") as bar:
        return inspect_data(data, patient_regex, labels, frame, workers, on_decode=bar.advance)
