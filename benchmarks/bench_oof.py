"""NF vs BatchNorm on out-of-fold metrics (issue 27's headline), written to docs/OOF.md.

Every image of a real set is validated once: `nfx finetune DATA --folds 5` (folds grouped by
copies of one image and by patient, stratified by label) for each network and recipe, then
`nfx evaluate PARENT` (out-of-fold predictions of the 5 fold models, ROC AUC with nfx's bootstrap
interval). Both networks of a set share the same folds (same seed), so their out-of-fold
predictions are paired image by image: the difference of ROC AUC and accuracy gets a paired
bootstrap interval over images (2000 resamples). The per-fold columns are the mean ± sd of the 5
fold models, each on its own validation fold: pooled out-of-fold ROC AUC also asks that the fold
models' scores share one scale, per-fold AUC does not. From scratch (no model hub here), 64 px,
batch 32, nfx's from-scratch schedule; the recipes of docs/RECIPES.md's base and its best.

    python benchmarks/bench_oof.py [--sets mri,elpv --archs nf_regnet_b0,resnet18 --recipes base,long-aug]
    python benchmarks/bench_oof.py --report-only
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import ROOT, device_line, write_keeping_reading  # noqa: E402
from bench_compare import EXTRA, SETS  # noqa: E402
from real_data import CACHE  # noqa: E402

# name -> (what it is, extra flags, epochs)
RECIPES = {"base": ("nfx's defaults, 8 epochs", (), 8),
           "long-aug": ("16 epochs and --aug light (round 1's best for both)", ("--aug", "light"), 16)}


def run_arm(key: str, data: Path, arch: str, recipe: str, args, work: Path) -> dict | None:
    _what, flags, epochs = RECIPES[recipe]
    name = f"{key}-{arch}-{recipe}-k{args.folds}-s{args.seed}"
    parent = work / "runs" / name
    done = parent / "evaluation.json"
    if not done.is_file():
        if args.report_only:
            return None
        nfx = [sys.executable, "-m", "nfx"]
        cmd = nfx + ["finetune", str(data), "--arch", arch, "--no-pretrained", "--size", str(args.size), "--bs", "32",
                     "--epochs", str(epochs), "--seed", str(args.seed), "--folds", str(args.folds), "--workers", "0",
                     "--out", str(work / "runs"), "--name", name, *EXTRA.get(key, ()), *flags]
        t0 = time.perf_counter()
        log = work / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
            subprocess.run(nfx + ["evaluate", str(parent)], check=True, stdout=fh, stderr=subprocess.STDOUT)
        print(f"{key} {arch} {recipe}: {time.perf_counter() - t0:.0f} s", flush=True)
    ev = json.loads(done.read_text())
    with open(parent / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    folds = (ev.get("folds") or {})
    return {"accuracy": ev["accuracy"], "roc_auc": ev["roc_auc"], "roc_auc_ci": ev.get("roc_auc_ci"),
            "fold_acc": (folds.get("accuracy_mean"), folds.get("accuracy_sd")),
            "fold_auc": (folds.get("roc_auc_mean"), folds.get("roc_auc_sd")),
            "n": ev["n_images"], "positive": ev["positive_class"], "rows": rows}


def standardised_auc(r: dict) -> float:
    """Pooled out-of-fold ROC AUC after each fold's logits are z-scored within the fold: what the
    pooled AUC would be if the fold models' scores shared one scale (their ranking kept)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    pos = r["positive"]
    p = np.clip(np.array([float(x[f"p_{pos}"]) for x in r["rows"]]), 1e-7, 1 - 1e-7)
    logit = np.log(p / (1 - p))
    fold = np.array([x["fold"] for x in r["rows"]])
    z = np.empty_like(logit)
    for f in set(fold.tolist()):
        m = fold == f
        z[m] = (logit[m] - logit[m].mean()) / (logit[m].std() + 1e-12)
    return float(roc_auc_score([x["label"] == pos for x in r["rows"]], z))


def paired(a: dict, b: dict, reps: int = 2000, seed: int = 0) -> dict:
    """a − b on the same images: ROC AUC and accuracy, with a bootstrap interval over images."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    pos = a["positive"]
    pb = {r["file"]: r for r in b["rows"]}
    files = [r["file"] for r in a["rows"] if r["file"] in pb]
    ra = {r["file"]: r for r in a["rows"]}
    y = np.array([ra[f]["label"] == pos for f in files], int)
    sa = np.array([float(ra[f][f"p_{pos}"]) for f in files])
    sb = np.array([float(pb[f][f"p_{pos}"]) for f in files])
    ca = np.array([ra[f]["prediction"] == ra[f]["label"] for f in files], float)
    cb = np.array([pb[f]["prediction"] == pb[f]["label"] for f in files], float)
    rng = np.random.default_rng(seed)
    d_auc, d_acc = [], []
    for _ in range(reps):
        i = rng.integers(0, len(files), len(files))
        if y[i].min() == y[i].max():
            continue
        d_auc.append(roc_auc_score(y[i], sa[i]) - roc_auc_score(y[i], sb[i]))
        d_acc.append(ca[i].mean() - cb[i].mean())
    return {"n": len(files), "d_auc": roc_auc_score(y, sa) - roc_auc_score(y, sb), "d_acc": ca.mean() - cb.mean(),
            "auc_ci": tuple(np.percentile(d_auc, [2.5, 97.5])), "acc_ci": tuple(np.percentile(d_acc, [2.5, 97.5]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="mri,elpv")
    ap.add_argument("--archs", default="nf_regnet_b0,resnet18", help="the first is compared with each other one")
    ap.add_argument("--recipes", default="base,long-aug")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=CACHE / "bench_oof")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    import torch

    sets, archs, recipes = args.sets.split(","), args.archs.split(","), args.recipes.split(",")
    res: dict[tuple[str, str, str], dict] = {}
    for key in sets:
        data = SETS[key][1]()
        for recipe in recipes:
            for arch in archs:
                got = run_arm(key, data, arch, recipe, args, args.work)
                if got:
                    res[(key, recipe, arch)] = got
    lines = ["# NF vs BatchNorm on out-of-fold metrics (`benchmarks/bench_oof.py`)", "",
             __doc__.split("\n\n", 1)[1].split("\n    python")[0].strip(), "",
             f"Device: {device_line(torch.device('cpu'))}.", "",
             f"Command: `python benchmarks/bench_oof.py --sets {args.sets} --archs {args.archs} --recipes {args.recipes} "
             f"--folds {args.folds} --seed {args.seed}` (one arm by hand: `nfx finetune DATA --arch nf_regnet_b0 "
             f"--no-pretrained --size {args.size} --bs 32 --epochs 8 --folds {args.folds}`, then `nfx evaluate RUN`).", ""]
    for key in sets:
        lines += [f"## {SETS[key][0]}", "",
                  "| recipe | model | images | out-of-fold accuracy | out-of-fold ROC AUC (95 % CI) | "
                  f"Δ accuracy vs {archs[0]} (95 % CI) | Δ ROC AUC vs {archs[0]} (95 % CI) | "
                  "per fold: accuracy | per fold: ROC AUC | pooled ROC AUC, each fold's logits z-scored |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for recipe in recipes:
            ref = res.get((key, recipe, archs[0]))
            for arch in archs:
                r = res.get((key, recipe, arch))
                if not r:
                    continue
                ci = r["roc_auc_ci"]
                auc = f"{r['roc_auc']:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
                d = paired(r, ref) if ref and arch != archs[0] else None
                da = f"{d['d_acc']:+.3f} ({d['acc_ci'][0]:+.3f} to {d['acc_ci'][1]:+.3f})" if d else "–"
                du = f"{d['d_auc']:+.3f} ({d['auc_ci'][0]:+.3f} to {d['auc_ci'][1]:+.3f})" if d else "–"
                fa, fu = r["fold_acc"], r["fold_auc"]
                pf = (f"{fa[0]:.3f} ± {fa[1]:.3f} | {fu[0]:.3f} ± {fu[1]:.3f}" if fa[0] is not None and fu[0] is not None
                      else "– | –")
                lines.append(f"| {RECIPES[recipe][0]} | {arch} | {r['n']} | {r['accuracy']:.3f} | {auc} | {da} | {du} | {pf} "
                             f"| {standardised_auc(r):.3f} |")
        lines.append("")
    out = ROOT / "docs" / "OOF.md"
    write_keeping_reading(out, lines)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
