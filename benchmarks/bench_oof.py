"""NF vs BatchNorm on out-of-fold metrics (issue 27's headline), written to docs/OOF.md.

Every image of a real set is validated once: `nfx finetune DATA --folds 5` (folds grouped by
copies of one image and by patient, stratified by label) for each network and recipe, then
`nfx evaluate PARENT` (out-of-fold predictions of the 5 fold models, ROC AUC with nfx's bootstrap
interval). Both networks of a set share the same folds (same seed), so their out-of-fold
predictions are paired image by image: the difference of ROC AUC and accuracy gets a paired
bootstrap interval over images (2000 resamples). The per-fold columns are the mean ± sd of the 5
fold models, each on its own validation fold: pooled out-of-fold ROC AUC also asks that the fold
models' scores share one scale, per-fold AUC does not. 64 px, batch 32; the recipes of
docs/RECIPES.md's base and its best, each from scratch (no model hub here; nfx's from-scratch
schedule) and from local weights (`local*`: each network pretrained by nfx on the 2384 ELPV cells
outside the ELPV set, 8 classes of cell type × defect probability, 16 epochs, --aug light; then
nfx's fine-tune schedule — cross-domain transfer for the brain MRI set, in-domain transfer from
disjoint cells whose labels include the defect task for the ELPV set). `*-keepbest`: the same
training keeping the best epoch by validation ROC AUC (`--keep best`, nfx's default before
2026-12-06) instead of the last.

    python benchmarks/bench_oof.py [--sets mri,elpv --archs nf_regnet_b0,resnet18 --recipes base,local]
    python benchmarks/bench_oof.py --report-only
"""

from __future__ import annotations

import argparse
import csv
import gzip
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
from real_data import CACHE, elpv_pretrain  # noqa: E402

# name -> (what it is, extra flags, epochs)
RECIPES = {"base": ("nfx's defaults, 8 epochs", (), 8),
           "long-aug": ("16 epochs and --aug light (round 1's best for both)", ("--aug", "light"), 16),
           # from local weights: each network pretrained by nfx on the ELPV cells outside the ELPV set
           "local": ("local weights, nfx's defaults (fine-tune schedule), 8 epochs", (), 8),
           "local-long-aug": ("local weights, 16 epochs and --aug light", ("--aug", "light"), 16),
           # the regime NF nets are built for: micro-batch 4 under accumulation to the same effective batch
           # (an NF net computes the same at any micro-batch: docs/COMPARE.md; BatchNorm does not)
           "local-mb4": ("local weights at micro-batch 4 × --accum 8", ("--bs", "4", "--accum", "8"), 8),
           # nfx before --keep: model.safetensors was the best epoch by validation ROC AUC, chosen on
           # the very fold it is then scored on
           "base-keepbest": ("nfx's defaults with --keep best (the default before 2026-12-06)", ("--keep", "best"), 8),
           "long-aug-keepbest": ("16 epochs, --aug light, --keep best", ("--aug", "light", "--keep", "best"), 16),
           # the search's last items (issue 27): the lr range test, CutMix, the search from local weights
           "lr-find": ("nfx's defaults with --lr-find (lr range test per fold model), 8 epochs", ("--lr-find",), 8),
           "cutmix": ("16 epochs, --aug light and --cutmix 1.0", ("--aug", "light", "--cutmix", "1.0"), 16),
           "local-lr-find": ("local weights, --lr-find, 8 epochs", ("--lr-find",), 8),
           "local-cutmix": ("local weights, 16 epochs, --aug light and --cutmix 1.0",
                            ("--aug", "light", "--cutmix", "1.0"), 16)}
# a change and the recipe it is judged against: same seed, same folds, each network against itself
REFERENCE = {"lr-find": "base", "cutmix": "long-aug", "long-aug": "base", "local-lr-find": "local",
             "local-long-aug": "local", "local-cutmix": "local-long-aug", "local-mb4": "local"}
PRETRAIN_EPOCHS = 16


def pretrain(arch: str, args, work: Path) -> Path:
    """The local weights: `arch` trained from scratch by nfx on the 2384 ELPV cells outside the ELPV
    set (8 classes, real_data.elpv_pretrain, its fixed 10 % validation split), 64 px, 16 epochs, --aug light."""
    name = f"pretrain-elpv8-{arch}-{args.size}-{PRETRAIN_EPOCHS}ep"
    run = work / "pretrain" / name
    weights = run / "model.safetensors"
    if weights.is_file() and (run / "metrics.json").is_file():
        return weights
    if args.report_only:
        raise FileNotFoundError(weights)
    data = elpv_pretrain()
    cmd = [sys.executable, "-m", "nfx", "finetune", str(data), "--labels", str(data / "labels.csv"), "--arch", arch,
           "--no-pretrained",
           "--size", str(args.size), "--bs", "32", "--epochs", str(PRETRAIN_EPOCHS), "--aug", "light", "--seed", "0",
           "--workers", "0", "--allow-duplicate-leak", "--out", str(run.parent), "--name", name]
    t0 = time.perf_counter()
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(run.parent / f"{name}.log", "w") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
    m = json.loads((run / "metrics.json").read_text())
    print(f"pretrained {arch}: valid accuracy {m.get('valid_accuracy')} in {time.perf_counter() - t0:.0f} s", flush=True)
    return weights


DOC = ROOT / "docs" / "OOF.md"
RESULTS = ROOT / "benchmarks" / "results" / "oof"  # committed: each arm's out-of-fold record, so docs/OOF.md
# regenerates without the cache of runs (~/.cache/nfx-bench, gigabytes of checkpoints, lost with the machine)


def _record(parent: Path, folds: int) -> dict:
    """What the report needs of one finished arm: metrics and its out-of-fold predictions, one row per image."""
    ev = json.loads((parent / "evaluation.json").read_text())
    pos = ev["positive_class"]
    with open(parent / "predictions.csv") as fh:
        rows = [{"file": r["file"], "label": r["label"], "prediction": r["prediction"], f"p_{pos}": r[f"p_{pos}"],
                 "fold": r["fold"]} for r in csv.DictReader(fh)]
    f = ev.get("folds") or {}
    per_fold = [json.loads((parent / f"fold-{i}" / "metrics.json").read_text()) for i in range(1, folds + 1)]
    return {"accuracy": ev["accuracy"], "roc_auc": ev["roc_auc"], "roc_auc_ci": ev.get("roc_auc_ci"),
            "fold_acc": (f.get("accuracy_mean"), f.get("accuracy_sd")),
            "fold_auc": (f.get("roc_auc_mean"), f.get("roc_auc_sd")),
            "n": ev["n_images"], "positive": pos, "rows": rows,
            "chosen": [m.get("selected_epoch") for m in per_fold],
            "lrs": [(m.get("lr_find") or {}).get("lr") for m in per_fold]}


def save_record(name: str, size: int, rec: dict, results: Path = RESULTS) -> Path:
    """Write one arm's record to benchmarks/results/oof/NAME.json.gz (atomic; stable bytes for git)."""
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"{name}.json.gz"
    tmp = out.with_name(f".{out.name}.tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as fh:
        fh.write(json.dumps({"size": size, **rec}, sort_keys=True).encode())
    os.replace(tmp, out)
    return out


def load_record(name: str, size: int, results: Path = RESULTS) -> dict | None:
    path = results / f"{name}.json.gz"
    if not path.is_file():
        return None
    with gzip.open(path, "rb") as fh:
        rec = json.loads(fh.read())
    if rec.pop("size") != size:
        return None  # the same arm at another image size is another experiment
    rec["fold_acc"], rec["fold_auc"] = tuple(rec["fold_acc"]), tuple(rec["fold_auc"])
    return rec


def _shown_path(p: Path) -> str:
    p = p.resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def run_arm(key: str, data, arch: str, recipe: str, seed: int, args, work: Path, run: bool) -> dict | None:
    """One arm's record: from its finished run in the cache (and then kept in benchmarks/results/), else from
    benchmarks/results/, else trained now when `run` (`data`: a function giving the set's folder, called
    only to train, so a report from the kept records needs neither the cache nor the data)."""
    _what, flags, epochs = RECIPES[recipe]
    name = f"{key}-{arch}-{recipe}-k{args.folds}-s{seed}"
    parent = work / "runs" / name
    done = parent / "evaluation.json"
    if not done.is_file():
        kept = load_record(name, args.size)
        if kept is not None:
            return kept
        if not run:
            return None
        nfx = [sys.executable, "-m", "nfx"]
        start = ["--weights", str(pretrain(arch, args, work))] if recipe.startswith("local") else ["--no-pretrained"]
        cmd = nfx + ["finetune", str(data()), "--arch", arch, *start, "--size", str(args.size), "--bs", "32",
                     "--epochs", str(epochs), "--seed", str(seed), "--folds", str(args.folds), "--workers", "0",
                     "--out", str(work / "runs"), "--name", name, *EXTRA.get(key, ()), *flags]
        t0 = time.perf_counter()
        log = work / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
            subprocess.run(nfx + ["evaluate", str(parent)], check=True, stdout=fh, stderr=subprocess.STDOUT)
        print(f"{key} {arch} {recipe} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    rec = _record(parent, args.folds)
    save_record(name, args.size, rec)
    return rec


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


def mean_ci(xs: list[float], signed: bool = False) -> str:
    """Mean with a 95 % t-interval over seeds."""
    import statistics

    from scipy import stats

    m = statistics.mean(xs)
    h = stats.t.ppf(0.975, len(xs) - 1) * statistics.stdev(xs) / len(xs) ** 0.5
    return f"{m:+.3f} ({m - h:+.3f} to {m + h:+.3f})" if signed else f"{m:.3f} ({m - h:.3f}–{m + h:.3f})"


def delta(d: dict, which: str) -> str:
    """One paired difference with its interval: which = "acc" or "auc"."""
    lo, hi = d[f"{which}_ci"]
    return f"{d[f'd_{which}']:+.3f} ({lo:+.3f} to {hi:+.3f})"


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
    ap.add_argument("--recipes", default="base,base-keepbest,long-aug,long-aug-keepbest,lr-find,cutmix,local,local-mb4,"
                                         "local-lr-find,local-long-aug,local-cutmix")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", default="0", help="seeds to run (each seed: other folds and initialisation); "
                    "the doc also reports the cells of --report-seeds already on disk")
    ap.add_argument("--report-seeds", default="0,1,2")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=CACHE / "bench_oof")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--doc", type=Path, default=DOC,
                    help="where the report goes; bench_oof refuses to overwrite it with fewer rows than it shows")
    args = ap.parse_args(argv)
    import torch

    sets, archs, recipes = args.sets.split(","), args.archs.split(","), args.recipes.split(",")
    seeds = [int(x) for x in args.seeds.split(",")]
    shown = sorted(set(seeds) | {int(x) for x in args.report_seeds.split(",")})
    res: dict[tuple[str, str, str, int], dict] = {}
    for key in sets:
        data = SETS[key][1]
        for recipe in recipes:
            for seed in shown:
                for arch in archs:
                    got = run_arm(key, data, arch, recipe, seed, args, args.work, seed in seeds and not args.report_only)
                    if got:
                        res[(key, recipe, arch, seed)] = got
    main_doc = args.doc.resolve() == DOC  # docs/OOF.md: the whole study; another doc: what this run names
    title = "# NF vs BatchNorm on out-of-fold metrics (`benchmarks/bench_oof.py`)"
    if not main_doc:
        title += f": {', '.join(recipes)}, seeds {', '.join(map(str, shown))}"
    lines = [title, "",
             __doc__.split("\n\n", 1)[1].split("\n    python")[0].strip(), "",
             f"Device: {device_line(torch.device('cpu'))}.", "",
             (f"Command: `python benchmarks/bench_oof.py --sets {args.sets} --archs {args.archs} --recipes {args.recipes} "
              f"--folds {args.folds} --seeds 0`, then `--recipes base,local,local-mb4 --seeds 1,2` (more seeds of three "
              "recipes), then `--report-only`" if main_doc else
              f"Command: `python benchmarks/bench_oof.py --sets {args.sets} --archs {args.archs} --recipes {args.recipes} "
              f"--folds {args.folds} --seeds {','.join(map(str, shown))} --doc {_shown_path(args.doc)}`")
             + f" (one arm by hand: `nfx finetune DATA --arch nf_regnet_b0 --no-pretrained --size {args.size} "
             f"--bs 32 --epochs 8 --folds {args.folds}`, then `nfx evaluate RUN`). Each arm's record (metrics and "
             "out-of-fold predictions) is kept in `benchmarks/results/oof/`, so a report regenerates without the runs.",
             ""]
    for key in sets:
        lines += [f"## {SETS[key][0]}", "",
                  "| recipe | seed | model | images | out-of-fold accuracy | out-of-fold ROC AUC (95 % CI) | "
                  f"Δ accuracy vs {archs[0]} (95 % CI) | Δ ROC AUC vs {archs[0]} (95 % CI) | "
                  "per fold: accuracy | per fold: ROC AUC | pooled ROC AUC, each fold's logits z-scored |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for recipe in recipes:
            have = [sd for sd in shown if all((key, recipe, a, sd) in res for a in archs)]
            # each network against the first on the same images, once per seed (2000 resamples each)
            vs = {(arch, sd): paired(res[(key, recipe, arch, sd)], res[(key, recipe, archs[0], sd)])
                  for arch in archs[1:] for sd in have}
            for seed in have:
                for arch in archs:
                    r = res[(key, recipe, arch, seed)]
                    ci = r["roc_auc_ci"]
                    auc = f"{r['roc_auc']:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
                    d = vs.get((arch, seed))
                    da, du = (delta(d, "acc"), delta(d, "auc")) if d else ("–", "–")
                    fa, fu = r["fold_acc"], r["fold_auc"]
                    pf = (f"{fa[0]:.3f} ± {fa[1]:.3f} | {fu[0]:.3f} ± {fu[1]:.3f}" if fa[0] is not None and fu[0] is not None
                          else "– | –")
                    lines.append(f"| {RECIPES[recipe][0]} | {seed} | {arch} | {r['n']} | {r['accuracy']:.3f} | {auc} | {da} | "
                                 f"{du} | {pf} | {standardised_auc(r):.3f} |")
            if len(have) > 1:
                for arch in archs:
                    rs = [res[(key, recipe, arch, sd)] for sd in have]
                    ds = [vs[(arch, sd)] for sd in have] if arch != archs[0] else []
                    da = f"{mean_ci([d['d_acc'] for d in ds], True)}" if ds else "–"
                    du = f"{mean_ci([d['d_auc'] for d in ds], True)}" if ds else "–"
                    lines.append(f"| **{RECIPES[recipe][0]}: mean over seeds** (t-interval) | {','.join(map(str, have))} | "
                                 f"{arch} | {rs[0]['n']} | {mean_ci([r['accuracy'] for r in rs])} | "
                                 f"{mean_ci([r['roc_auc'] for r in rs])} | {da} | {du} | – | – | – |")
        lines.append("")
    kept = [(key, r) for key in sets for r in recipes if f"{r}-keepbest" in recipes]
    if kept:
        lines += ["## Which epoch to keep: the last (default) vs the best by validation ROC AUC (`--keep best`)", "",
                  "The same training (same seed, folds and schedule); only the epoch each fold model keeps differs. "
                  "Δ = last − best on the same images, paired bootstrap interval.", "",
                  "| set | recipe | seed | model | Δ accuracy (95 % CI) | Δ ROC AUC (95 % CI) | epochs chosen by `--keep best` |",
                  "|---|---|---|---|---|---|---|"]
        for key, recipe in kept:
            for seed in shown:
                for arch in archs:
                    a, b = res.get((key, recipe, arch, seed)), res.get((key, f"{recipe}-keepbest", arch, seed))
                    if not (a and b):
                        continue
                    d = paired(a, b)
                    lines.append(f"| {SETS[key][0]} | {RECIPES[recipe][0]} | {seed} | {arch} | {delta(d, 'acc')} | "
                                 f"{delta(d, 'auc')} | {', '.join(str(e) for e in b['chosen'])} of {RECIPES[recipe][2]} |")
        lines.append("")
    changes = [(key, r) for key in sets for r in recipes if REFERENCE.get(r) in recipes]
    if changes:
        lines += ["## Each change against its reference recipe", "",
                  "The same seed and folds; each network against itself (Δ = change − reference on the same images, "
                  "paired bootstrap interval per seed; over several seeds the mean with a t-interval). A change earns "
                  "a place in the NF default only if it moves the NF net more than the BatchNorm net.", "",
                  "| set | change | reference | seed | model | Δ accuracy (95 % CI) | Δ ROC AUC (95 % CI) | lr found per fold |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, recipe in changes:
            ref = REFERENCE[recipe]
            for arch in archs:
                have = [sd for sd in shown if (key, recipe, arch, sd) in res and (key, ref, arch, sd) in res]
                ds = {sd: paired(res[(key, recipe, arch, sd)], res[(key, ref, arch, sd)]) for sd in have}
                for sd in have:
                    lrs = [x for x in res[(key, recipe, arch, sd)]["lrs"] if x]
                    lines.append(f"| {SETS[key][0]} | {RECIPES[recipe][0]} | {RECIPES[ref][0]} | {sd} | {arch} | "
                                 f"{delta(ds[sd], 'acc')} | {delta(ds[sd], 'auc')} | "
                                 f"{', '.join(f'{x:.2g}' for x in lrs) if lrs else '–'} |")
                if len(have) > 1:
                    lines.append(f"| {SETS[key][0]} | **{RECIPES[recipe][0]}: mean over seeds** | {RECIPES[ref][0]} | "
                                 f"{','.join(map(str, have))} | {arch} | {mean_ci([d['d_acc'] for d in ds.values()], True)} | "
                                 f"{mean_ci([d['d_auc'] for d in ds.values()], True)} | – |")
        lines.append("")
    out = args.doc
    write_keeping_reading(out, lines, fix="rerun those arms (their records are neither in the cache nor in "
                                          "benchmarks/results/oof/), or write elsewhere with --doc OTHER.md")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
