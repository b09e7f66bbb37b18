"""Does the fold ensemble beat the best single fold? Measured on real images.

The brain MRI set (benchmarks/real_data.py) is split once, grouped by copies of one image, into a
held-out test set (20 %) and the rest; `nfx finetune --folds K` cross-validates the rest; then the
test set is scored by each fold model and by the fold ensemble (`nfx evaluate PARENT --split test`).
Repeated over seeds (each its own test split and folds). Writes docs/FOLDS.md.

    python benchmarks/bench_folds.py [--folds 5 --seeds 0,1,2 --arch nf_regnet_b0 --size 96 --epochs 12]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import ROOT, device_line  # noqa: E402
from real_data import CACHE, brain_mri  # noqa: E402

DOC = ROOT / "docs" / "FOLDS.md"


def test_split(data: Path, seed: int, work: Path) -> Path:
    """A labels CSV: 20 % of the images as `test`, grouped by copy group and stratified by label."""
    import numpy as np

    from nfx.data.copies import group_copies, signature
    from nfx.data.images import decode_file
    from nfx.data.split import grouped_stratified_split

    files = sorted(f for f in data.rglob("*") if f.is_file() and f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    labels = [f.parent.name for f in files]
    sigs = np.stack([signature(decode_file(f, voi="minmax")) for f in files])
    groups = [f"g{g}" for g in group_copies(sigs).group.tolist()]
    side = grouped_stratified_split(labels, groups, 0.2, seed)
    out = work / f"labels-seed{seed}.csv"
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for f, lbl, s in zip(files, labels, side, strict=True):
            w.writerow([str(f), lbl, "test" if s == "valid" else "train"])
    return out


def one_seed(args, data: Path, seed: int, work: Path) -> dict:
    import json

    from nfx import api
    from nfx.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from nfx.console import Printer
    from nfx.workflows.folds_eval import evaluate_folds

    name = f"{args.arch}-{args.size}px-{args.epochs}ep-k{args.folds}-seed{seed}"
    parent = work / "runs" / name
    labels = test_split(data, seed, work)
    if parent.exists() and not (parent / "folds.csv").is_file():  # stopped before its folds were assigned
        import shutil

        shutil.rmtree(parent)
    if not (parent / "metrics.json").is_file():
        if parent.exists():
            api.resume_folds(parent, Printer(quiet=True))
        else:
            cfg = RunConfig(data=DataConfig(path=str(data), labels=str(labels), size=args.size, num_workers=0),
                            model=ModelConfig(arch=args.arch, pretrained=False),
                            train=TrainConfig(epochs=args.epochs, bs=args.bs, seed=seed, folds=args.folds),
                            out=str(parent.parent), name=parent.name)
            api.finetune_folds(cfg, Printer(quiet=True))
    ens = evaluate_folds(parent, None, Printer(quiet=True), split="test", n_bootstrap=200, plots=False)
    oof = evaluate_folds(parent, None, Printer(quiet=True), n_bootstrap=200, plots=False)
    singles = []
    for f in range(1, args.folds + 1):
        ev = api.evaluate(parent / f"fold-{f}", None, Printer(quiet=True), split="test", n_bootstrap=200, plots=False)
        singles.append({"fold": f, "accuracy": ev["accuracy"], "roc_auc": ev["roc_auc"]})
    # the best single fold as a user would pick it: by its own validation ROC AUC (not by the test set)
    val = [json.loads((parent / f"fold-{f}" / "metrics.json").read_text()).get("valid_roc_auc") or 0
           for f in range(1, args.folds + 1)]
    picked = singles[max(range(args.folds), key=lambda i: val[i])]
    res = {"seed": seed, "n_test": ens["n_images"], "ensemble_accuracy": ens["accuracy"],
           "ensemble_roc_auc": ens["roc_auc"], "ensemble_roc_auc_ci": ens.get("roc_auc_ci"),
           "oof_accuracy": oof["accuracy"], "oof_roc_auc": oof["roc_auc"],
           "picked_accuracy": picked["accuracy"], "picked_roc_auc": picked["roc_auc"],
           "best_accuracy": max(s["accuracy"] for s in singles), "best_roc_auc": max(s["roc_auc"] for s in singles),
           "mean_single_accuracy": statistics.fmean(s["accuracy"] for s in singles),
           "mean_single_roc_auc": statistics.fmean(s["roc_auc"] for s in singles),
           "seconds": json.loads((parent / "metrics.json").read_text()).get("seconds")}
    print(res, flush=True)
    return res


def _cpu():
    import torch

    return torch.device("cpu")


def render(args, results: list[dict]) -> str:
    def ms(key: str) -> str:
        v = [r[key] for r in results]
        return f"{statistics.fmean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "")

    cmd = (f"python benchmarks/bench_folds.py --folds {args.folds} --seeds {args.seeds} --arch {args.arch} "
           f"--size {args.size} --epochs {args.epochs} --bs {args.bs}")
    lines = ["# k-fold: the fold ensemble against single folds, on a held-out test set", "",
             f"Data: brain MRI (253 files; source and licence in `benchmarks/real_data.py`). Per seed: 20 % of the "
             f"images held out as a test set (grouped by copies of one image, stratified by label), {args.folds}-fold "
             f"cross-validation of the rest with `nfx finetune --folds {args.folds}` ({args.arch} from scratch, "
             f"{args.size} px, {args.epochs} epochs, batch {args.bs}, nfx's defaults otherwise), then the test set "
             "scored by each fold model and by the ensemble (`nfx evaluate PARENT --split test`). Mean ± sd over "
             f"seeds {args.seeds}.", "", f"Device: {device_line(_cpu())}", "", f"Command: `{cmd}`", "",
             "| on the test set | accuracy | ROC AUC |", "|---|---|---|",
             f"| fold ensemble (mean of {args.folds} softmax outputs) | {ms('ensemble_accuracy')} | {ms('ensemble_roc_auc')} |",
             f"| the fold a user would pick (best validation ROC AUC) | {ms('picked_accuracy')} | {ms('picked_roc_auc')} |",
             f"| the best fold in hindsight (chosen on the test set) | {ms('best_accuracy')} | {ms('best_roc_auc')} |",
             f"| mean of the single folds | {ms('mean_single_accuracy')} | {ms('mean_single_roc_auc')} |",
             f"| (out-of-fold on the cross-validated images) | {ms('oof_accuracy')} | {ms('oof_roc_auc')} |", "",
             "| seed | test images | ensemble acc / AUC (95 % CI) | picked fold | best fold | cross-validation s |",
             "|---|---|---|---|---|---|"]
    for r in results:
        ci = r["ensemble_roc_auc_ci"]
        lines.append(f"| {r['seed']} | {r['n_test']} | {r['ensemble_accuracy']:.3f} / {r['ensemble_roc_auc']:.3f}"
                     + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
                     + f" | {r['picked_accuracy']:.3f} / {r['picked_roc_auc']:.3f} | {r['best_accuracy']:.3f} / "
                     f"{r['best_roc_auc']:.3f} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arch", default="nf_regnet_b0")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--bs", type=int, default=16)
    ap.add_argument("--work", type=Path, default=CACHE / "bench_folds")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = brain_mri()
    results = [one_seed(args, data, int(s), args.work) for s in args.seeds.split(",")]
    text = render(args, results)
    print(text)
    if not args.no_doc:
        old = DOC.read_text() if DOC.is_file() else ""
        if "## What it shows" in old:
            text += "\n" + old[old.index("## What it shows"):]
        DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
