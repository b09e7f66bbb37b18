"""`nfx compare` on real medical images, written to docs/COMPARE.md and docs/compare.png.

Does a normalizer-free net make `--accum k` at a small micro-batch behave like one true batch,
while a BatchNorm net degrades? Runs the grid through nfx's own `compare` verb on the brain MRI
set (benchmarks/real_data.py) and writes the table, the plot and what it shows.

    python benchmarks/bench_compare.py                  # CPU-sized defaults (see --help)
The grid is resumable: rerunning the same command reuses every finished cell.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import ROOT, device_line  # noqa: E402
from real_data import CACHE, brain_mri  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="nf_regnet_b0,regnety_004")
    ap.add_argument("--micro-batches", default="4,8,32")
    ap.add_argument("--effective-batch", type=int, default=32)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--work", type=Path, default=CACHE / "bench_compare")
    args = ap.parse_args(argv)

    import torch

    from nfx import api
    from nfx.console import Printer

    data = brain_mri()
    cfg = api.CompareConfig(
        data=str(data), models=tuple(args.models.split(",")),
        micro_batches=tuple(int(b) for b in args.micro_batches.split(",")),
        effective_batch=args.effective_batch, agc=(True, False),
        seeds=tuple(int(s) for s in args.seeds.split(",")), size=args.size, epochs=args.epochs,
        out=str(args.work), name=f"{'-'.join(cfg_models(args))}-{args.size}px-{args.epochs}ep",
        extra=("--workers", "0"),
    )
    res = api.compare(cfg, Printer())
    docs = ROOT / "docs"
    shutil.copyfile(Path(res["out_dir"]) / "compare.png", docs / "compare.png")
    mem = "peak_rss_mb"
    lines = [
        "# NF vs BatchNorm under gradient accumulation (`nfx compare`)", "",
        f"Data: brain MRI, {sum(1 for p in data.rglob('*') if p.is_file())} images, 2 classes (source and "
        "licence: `benchmarks/real_data.py`). From scratch (no hub here), "
        f"{args.size} px, {args.epochs} epochs per cell, effective batch {args.effective_batch} kept by "
        f"`--accum` = {args.effective_batch} / micro-batch, AGC `auto` (λ from the effective batch) or off, "
        f"seeds {args.seeds} (each seed its own split and init); nfx's default schedule, resize and "
        "augmentation otherwise. Metrics of the last epoch, mean ± sd over seeds. images/s: training "
        "passes only. Memory: peak RSS of the cell's training process (CPU; includes the Python runtime "
        "and libraries, so it shows differences, not the model's footprint).", "",
        f"Device: {device_line(torch.device('cpu'))}.", "",
        "Command: `python benchmarks/bench_compare.py " + " ".join(sys.argv[1:]) + "` (equivalently "
        f"`nfx compare DATA --models {args.models} --micro-batches {args.micro_batches} --effective-batch "
        f"{args.effective_batch} --seeds {args.seeds} --size {args.size} --epochs {args.epochs}`)", "",
        "| model | micro-batch × accum | AGC | accuracy | ROC AUC | images/s | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(f"| {r['arch']} | {r['micro_batch']} × {r['accum']} | {'on' if r['agc'] else 'off'} | "
                     f"{_pm(r['accuracy'], r['accuracy_sd'])} | {_pm(r['roc_auc'], r['roc_auc_sd'])} | "
                     f"{r['images_per_s']:.1f} | {r[mem]:.0f} |")
    out = docs / "COMPARE.md"
    # the reading of the table is written by a person; a rerun keeps it (and it may need updating)
    old = out.read_text() if out.is_file() else ""
    reading = old[old.index("## What it shows"):] if "## What it shows" in old else "## What it shows\n\n(to be written)\n"
    lines += ["", "![accuracy and AUC against micro-batch](compare.png)", "", reading.rstrip()]
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out)
    print(out.read_text())
    return 0


def cfg_models(args) -> list[str]:
    return args.models.split(",")


def _pm(m, sd) -> str:
    if m is None:
        return "n/a"
    return f"{m:.3f}" + ("" if sd is None else f" ± {sd:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
