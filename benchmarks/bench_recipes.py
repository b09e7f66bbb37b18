"""Recipe search for NF vs BatchNorm (issue 27, item 2), written to docs/RECIPES.md.

Each change of recipe is given to **both** networks of a pair (nf_regnet_b0 and resnet18, the
pair of docs/COMPARE.md) and judged against each one's own base recipe on the same splits, two
real sets, three seeds (every seed its own copy-grouped split and initialisation). A cell is an
ordinary `nfx finetune` run from scratch (no model hub here) in a child process, 64 px, micro-batch
32 (effective batch 32): for an NF net accumulation is exact (docs/COMPARE.md: the same numbers at
micro-batch 1, 2 and 32), so a recipe measured here holds for NF at any micro-batch; the BatchNorm
net at micro-batch 32 is its best case. Round 1 (docs/RECIPES.md) shares its base cells with
docs/COMPARE.md (same work folder); round 2 (docs/RECIPES2.md: optimiser, AGC λ, EMA) ran its own
base cells in its own work folder, because the copy signature changed between the rounds
(SIG_VERSION 3) and with it some copy groups and so the seeds' splits: every difference in a
table is paired within one round, on identical splits. (The copy rule changed once more after
round 2 — 10×10 coefficients at 0.98 — so cells run afresh now would split some seeds differently
from both rounds' cached cells: a new round needs its own base cells again.)

Metrics: validation accuracy and ROC AUC of the last epoch; per recipe mean ± sd over seeds, and
the paired difference to the base recipe (same seed = same split and init) with its 95 % t-interval.

    python benchmarks/bench_recipes.py                       # both sets, 3 seeds, 8 recipes (about 1 h on 2 cores)
    python benchmarks/bench_recipes.py --recipes base,epochs-16-aug-light --archs nf_resnet26,resnet26
    python benchmarks/bench_recipes.py --report-only         # the doc from the cells finished so far
    python benchmarks/bench_recipes.py --work ~/.cache/nfx-bench/bench_recipes2 --doc RECIPES2.md \
        --recipes base,sgd-0.1,sgd-0.02,agc-0.02,sgd-0.1-agc-0.02,ema   # round 2
    python benchmarks/bench_recipes.py --work ~/.cache/nfx-bench/bench_recipes3 --doc RECIPES3.md \
        --recipes base,epochs-16-aug-light --archs nf_regnet_b0,nf_regnet_b1,resnet18   # round 3: NF width
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import ROOT, device_line, write_keeping_reading  # noqa: E402
from bench_compare import EXTRA, PAIR1, SETS, _pm, study_cell  # noqa: E402
from real_data import CACHE  # noqa: E402

# name → (what it is, extra `nfx finetune` flags, epochs); "base" is nfx's from-scratch default
RECIPES: dict[str, tuple[str, tuple[str, ...], int]] = {
    "base": ("nfx's defaults (augmentation none, AdamW wd 0.01, one-cycle)", (), 8),
    "aug-light": ("--aug light", ("--aug", "light"), 8),
    "aug-strong": ("--aug strong", ("--aug", "strong"), 8),
    "mixup": ("--mixup 0.4", ("--mixup", "0.4"), 8),
    "label-smoothing": ("--label-smoothing 0.1", ("--label-smoothing", "0.1"), 8),
    "drop": ("--drop-path 0.1 --dropout 0.25", ("--drop-path", "0.1", "--dropout", "0.25"), 8),
    "wd": ("--wd 0.05", ("--wd", "0.05"), 8),
    "epochs-16": ("16 epochs instead of 8", (), 16),
    "epochs-32": ("32 epochs instead of 8", (), 32),
    "epochs-16-aug-light": ("16 epochs and --aug light", ("--aug", "light"), 16),
    "lr-1e-3": ("--lr 1e-3 (half the default)", ("--lr", "1e-3"), 8),
    "lr-4e-3": ("--lr 4e-3 (twice the default)", ("--lr", "4e-3"), 8),
    "ema": ("--ema 0.99", ("--ema", "0.99"), 8),
    "agc-0.02": ("--agc 0.02 (AGC clipping hard; auto is 0.113 at batch 32)", ("--agc", "0.02"), 8),
    "sgd-0.02": ("--optimizer sgd --lr 0.02 (Nesterov)", ("--optimizer", "sgd", "--lr", "0.02"), 8),
    "sgd-0.1": ("--optimizer sgd --lr 0.1 (Nesterov)", ("--optimizer", "sgd", "--lr", "0.1"), 8),
    "sgd-0.1-agc-0.02": ("--optimizer sgd --lr 0.1 --agc 0.02 (the paper's pairing: large-lr SGD held by AGC)",
                         ("--optimizer", "sgd", "--lr", "0.1", "--agc", "0.02"), 8),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="mri,elpv")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--archs", default=",".join(PAIR1), help="networks, each given every recipe")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=CACHE / "bench_nf_vs_bn")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--doc", default="RECIPES.md", help="file under docs/ to write (round 1: RECIPES.md, round 2: RECIPES2.md)")
    args = ap.parse_args(argv)

    import torch

    from nfx.console import Printer
    from nfx.workflows import compare as cmp

    seeds = [int(s) for s in args.seeds.split(",")]
    sets, recipes, archs = args.sets.split(","), args.recipes.split(","), args.archs.split(",")
    data = {k: SETS[k][1]() for k in sets}
    printer = Printer()
    results: dict[tuple[str, str, str], dict[int, dict]] = {}
    order = [(s, k, r, a) for s in seeds for r in recipes for k in sets for a in archs]  # seed-major: useful early
    for seed, key, recipe, arch in order:
        _what, flags, epochs = RECIPES[recipe]
        name = f"{key}-{args.size}px-{epochs}ep" + ("" if recipe == "base" or (recipe.startswith("epochs-") and not flags)
                                                     else f"-{recipe}")
        cfg = cmp.CompareConfig(
            data=str(data[key]), models=tuple(archs), micro_batches=(32,), effective_batch=32, agc=(True,),
            bn=("train",), seeds=tuple(seeds), size=args.size, epochs=epochs, out=str(args.work), name=name,
            extra=("--workers", "0", *EXTRA.get(key, ()), *flags)).validate()
        res = study_cell(cfg, cmp.Cell(arch, 32, 1, True, seed), args.report_only, printer, f"{key} {recipe}")
        if res is not None:
            results.setdefault((key, recipe, arch), {})[seed] = res
    write_doc(args, sets, recipes, archs, results, device_line(torch.device("cpu")))
    return 0


def _t95(xs: list[float]) -> tuple[float, float] | None:
    """Exact Student-t 95 % interval of a mean (scipy), unrounded: the paired differences are small,
    so nfx.workflows.compare._t_interval's rounded table would move their third decimal."""
    if len(xs) < 2:
        return None
    from scipy import stats

    m, se = statistics.mean(xs), statistics.stdev(xs) / len(xs) ** 0.5
    h = stats.t.ppf(0.975, len(xs) - 1) * se
    return (m - h, m + h)


def _row(vals: list[float]) -> str:
    return _pm(statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else None) if vals else "n/a"


def _diff(diffs: list[float]) -> str:
    if not diffs:
        return "–"
    ci = _t95(diffs)
    return f"{statistics.mean(diffs):+.3f}" + (f" ({ci[0]:+.3f} to {ci[1]:+.3f})" if ci else "")


def write_doc(args, sets, recipes, archs, results, device: str) -> None:
    lines = ["# Recipe search: NF vs BatchNorm given the same recipe (`benchmarks/bench_recipes.py`)", "",
             __doc__.split("\n\n", 1)[1].split("\n    python")[0].strip(), "",
             f"Device: {device}.", "",
             f"Command: `python benchmarks/bench_recipes.py --sets {args.sets} --seeds {args.seeds} "
             f"--recipes {args.recipes} --archs {args.archs}"
             + (f" --work WORK --doc {args.doc}" if args.doc != "RECIPES.md" else "") + "` (one cell by hand: `nfx finetune DATA --arch nf_regnet_b0 --no-pretrained "
             f"--bs 32 --size {args.size} --epochs 8 --seed 0 --mixup 0.4`).", ""]
    for key in sets:
        lines += [f"## {SETS[key][0]}", "",
                  "| recipe | model | seeds | accuracy | Δ accuracy vs base (95 % CI) | ROC AUC | Δ ROC AUC vs base (95 % CI) |",
                  "|---|---|---|---|---|---|---|"]
        for recipe in recipes:
            for arch in archs:
                got = results.get((key, recipe, arch), {})
                base = results.get((key, "base", arch), {})
                if not got:
                    continue
                both = sorted(set(got) & set(base))
                acc = [got[s]["accuracy"] for s in sorted(got)]
                auc = [got[s]["roc_auc"] for s in sorted(got)]
                da = [got[s]["accuracy"] - base[s]["accuracy"] for s in both] if recipe != "base" else []
                du = [got[s]["roc_auc"] - base[s]["roc_auc"] for s in both] if recipe != "base" else []
                lines.append(f"| {RECIPES[recipe][0] if recipe != 'base' else 'base: ' + RECIPES['base'][0]} | {arch} | "
                             f"{len(got)} | {_row(acc)} | {_diff(da)} | {_row(auc)} | {_diff(du)} |")
        lines.append("")
    out = ROOT / "docs" / args.doc
    write_keeping_reading(out, lines)
    print(out.read_text())


if __name__ == "__main__":
    raise SystemExit(main())
