"""Does nfx learn on real medical images? nfx's defaults side by side with a plain fastai
`Learner` on the same files, the same split, the same timm model and the same epoch budget,
over several seeds, from scratch and from local weights. Writes docs/LEARNING.md.

The plain Learner is what a fastai user writes first: `timm.create_model(arch, num_classes=2)`
(timm's head, no BatchNorm added) in `Learner(dls, model, metrics=[accuracy, RocAucBinary()])`,
`fit_one_cycle(epochs, 2e-3)` on all parameters (fastai's Adam, wd 0.01), fastai's own data
pipeline with `Resize(size, method='squish')`, no augmentation, normalised by the model's
mean/std. Both sides report the metrics of their **last** epoch (no best-epoch selection on the
validation split, which would flatter whoever picks).

Local weights: the same architecture pretrained by nfx itself on a *different* real set (a
4-way rotation task on pydicom's and pydicom-data's DICOM test images, see real_data.py), saved
as model.safetensors and passed as `--weights` (nfx) / `pretrained_cfg_overlay=dict(file=...)`
(plain) — the offline local-weights path a hospital machine uses.

    python benchmarks/bench_learning.py                       # the table in docs/LEARNING.md
    python benchmarks/bench_learning.py --seeds 0,1,2,3,4 --ablations
Every finished run is kept under --work (rerunning skips it), so a killed benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import ROOT, device_line  # noqa: E402
from real_data import CACHE, brain_mri, pretrain_set  # noqa: E402

DOC = ROOT / "docs" / "LEARNING.md"

# name → (trainer, overrides of nfx's defaults). "nfx" is nfx with nothing but the budget set.
VARIANTS = {
    "plain fastai Learner": ("plain", {}),
    "nfx defaults": ("nfx", {}),
}
# One default changed at a time, from the defaults before this benchmark (aug light): each row
# says its full difference from today's defaults.
ABLATIONS = {
    "nfx --aug light": ("nfx", {"aug": "light"}),  # the default before this benchmark
    "nfx --aug light --resize letterbox": ("nfx", {"aug": "light", "resize": "letterbox"}),
    "nfx --aug light --resize crop": ("nfx", {"aug": "light", "resize": "crop"}),
    "nfx --aug light --agc off": ("nfx", {"aug": "light", "agc": None}),
    # the schedule nfx used on a random body before this benchmark (fastai's fine_tune practice)
    "nfx --aug light --schedule fine-tune --lr 1e-3 --body-lr-div 10": (
        "nfx", {"aug": "light", "schedule": "fine-tune", "lr": 1e-3, "body_lr_div": 10.0}),
}
LOCAL_ABLATIONS = {
    "nfx --schedule from-scratch": ("nfx", {"schedule": "from-scratch"}),  # one lr, no warm-up, on local weights
    # head warm-up kept; after it (the head lr is halved at unfreezing) head 2e-3 / body 1e-3, or all at 2e-3
    "nfx --lr 4e-3 --body-lr-div 2": ("nfx", {"lr": 4e-3, "body_lr_div": 2.0}),
    # fastai's fine_tune practice, nfx's fine-tune defaults before this benchmark: body at lr/10
    "nfx --lr 1e-3 --body-lr-div 10": ("nfx", {"lr": 1e-3, "body_lr_div": 10.0}),
}


def nfx_run(data: Path, start: str, weights: Path | None, args, seed: int, over: dict, work: Path) -> dict:
    from nfx import api
    from nfx.config import (
        DataConfig,
        ModelConfig,
        RunConfig,
        TrainConfig,
        auto_agc_clip,
        resolve_schedule,
    )
    from nfx.console import Printer

    name = f"{start}-nfx-{_slug(over)}-s{seed}"
    res_file, done = _kept(work, name)
    if done:
        return done
    scratch = weights is None
    warm = resolve_schedule(TrainConfig(schedule=over.get("schedule")), from_scratch=scratch)[0].freeze_epochs
    data_cfg = {k: over[k] for k in ("resize", "aug") if k in over}
    cfg = RunConfig(
        data=DataConfig(path=str(data), size=args.size, num_workers=0, **data_cfg),
        model=ModelConfig(arch=args.arch, pretrained=not scratch, weights=str(weights) if weights else None),
        # the same epoch budget: head-only warm-up epochs count against it
        train=TrainConfig(epochs=args.epochs - warm, bs=args.bs, seed=seed, schedule=over.get("schedule"),
                          lr=over.get("lr"), body_lr_div=over.get("body_lr_div"),
                          agc=over["agc"] if "agc" in over else auto_agc_clip(args.bs)),
        out=str(work / "runs"), name=name,
    )
    import shutil

    shutil.rmtree(work / "runs" / name, ignore_errors=True)  # a run killed half-way starts again
    t0 = time.time()
    res = api.finetune(cfg, Printer(quiet=True))
    last = res.history[-1]
    out = {"accuracy": last["valid_accuracy"], "roc_auc": last["valid_roc_auc"], "seconds": round(time.time() - t0, 1),
           "epochs": len(res.history), "run_dir": str(res.run_dir),
           "agc_clip_fraction": [h.get("agc_clip_fraction") for h in res.history]}
    _write(res_file, out)
    return out


def plain_run(data: Path, start: str, weights: Path | None, args, seed: int, split_from: Path, work: Path) -> dict:
    """The plain fastai Learner on the split nfx made for the same seed (splits.csv)."""
    import csv

    import timm
    import torch
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        FuncSplitter,
        ImageBlock,
        Learner,
        Normalize,
        Resize,
        RocAucBinary,
        accuracy,
        set_seed,
    )

    name = f"{start}-plain-s{seed}"
    res_file, done = _kept(work, name)
    if done:
        return done
    with open(split_from / "splits.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] in ("train", "valid")]
    label = {r["path"]: r["label"] for r in rows}
    valid = {r["path"] for r in rows if r["split"] == "valid"}
    set_seed(seed, reproducible=True)
    kw = {"pretrained_cfg_overlay": {"file": str(weights)}} if weights else {}
    model = timm.create_model(args.arch, pretrained=weights is not None, num_classes=2, **kw)
    cfg = model.pretrained_cfg
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock), get_items=lambda _: sorted(label),
        get_y=lambda p: label[str(p)], splitter=FuncSplitter(lambda p: str(p) in valid),
        item_tfms=Resize(args.size, method="squish"),
        batch_tfms=Normalize.from_stats(list(cfg["mean"]), list(cfg["std"])),
    )
    dls = block.dataloaders(data, bs=args.bs, num_workers=0, device=torch.device("cpu"))
    learn = Learner(dls, model, metrics=[accuracy, RocAucBinary()])
    learn.logger = lambda *a, **k: None
    t0 = time.time()
    with learn.no_bar():
        learn.fit_one_cycle(args.epochs, 2e-3)
    vals = learn.recorder.values[-1]  # train_loss, valid_loss, accuracy, roc_auc
    out = {"accuracy": float(vals[2]), "roc_auc": float(vals[3]), "seconds": round(time.time() - t0, 1),
           "epochs": args.epochs, "n_valid": len(valid)}
    _write(res_file, out)
    return out


def pretrain(args, work: Path) -> Path:
    """nfx trains the arch from scratch on the rotation set; its weights are the local file."""
    from nfx import api
    from nfx.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from nfx.console import Printer

    run = work / "runs" / f"pretrain-{args.arch}-{args.size}-{args.pretrain_epochs}ep-{args.pretrain_aug}"
    if (run / "model.safetensors").is_file() and (run / "metrics.json").is_file():
        return run / "model.safetensors"
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    cfg = RunConfig(
        # the rotation task is made of rotated copies of each image under different labels by design:
        # allowed here (copy groups still keep all rotations of an image in one split)
        data=DataConfig(path=str(pretrain_set()), size=args.size, num_workers=0, flip=False,
                        aug=args.pretrain_aug, allow_duplicate_leak=True),
        model=ModelConfig(arch=args.arch, pretrained=False),
        train=TrainConfig(epochs=args.pretrain_epochs, bs=args.bs, seed=0),
        out=str(run.parent), name=run.name,
    )
    res = api.finetune(cfg, Printer(quiet=True))
    print(f"pretrained {args.arch} on the rotation set: valid accuracy {res.metrics['valid_accuracy']:.3f} "
          f"(chance 0.25) in {res.metrics['seconds']} s", flush=True)
    return run / "model.safetensors"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, help="class-folder dataset [default: the brain MRI set, see real_data.py]")
    ap.add_argument("--arch", default="nf_regnet_b0")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=6, help="epoch budget of every run (warm-up epochs included)")
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--starts", default="scratch,local", help="scratch and/or local (weights pretrained here)")
    ap.add_argument("--pretrain-epochs", type=int, default=12)
    ap.add_argument("--pretrain-aug", default="none", help="augmentation preset of the pretraining run "
                    "(never flips: the task is the orientation)")
    ap.add_argument("--ablations", action="store_true", help="also nfx with one default changed at a time "
                    "(ABLATIONS from scratch, LOCAL_ABLATIONS from local weights)")
    ap.add_argument("--ablation-seeds", default=None, help="seeds of the ablation rows [default: --seeds]")
    ap.add_argument("--work", type=Path, default=CACHE / "bench_learning")
    ap.add_argument("--no-doc", action="store_true", help="print only; do not write docs/LEARNING.md")
    args = ap.parse_args(argv)

    import torch

    data = args.data or brain_mri()
    work = args.work / f"{args.arch}-{args.size}px-{args.epochs}ep-bs{args.bs}-{data.name}"
    work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    ablation_seeds = [int(s) for s in args.ablation_seeds.split(",")] if args.ablation_seeds else seeds
    results: dict[str, dict[str, list[dict]]] = {}
    for start in args.starts.split(","):
        weights = pretrain(args, work) if start == "local" else None
        chosen = (LOCAL_ABLATIONS if start == "local" else ABLATIONS) if args.ablations else {}
        variants = {**VARIANTS, **chosen}
        for seed in seeds:
            ref = nfx_run(data, start, weights, args, seed, {}, work)  # makes the seed's split
            for vname, (kind, over) in variants.items():
                if vname not in VARIANTS and seed not in ablation_seeds:
                    continue
                if kind == "plain":
                    r = plain_run(data, start, weights, args, seed, Path(ref["run_dir"]), work)
                else:
                    r = ref if not over else nfx_run(data, start, weights, args, seed, over, work)
                results.setdefault(start, {}).setdefault(vname, []).append(r)
                print(f"{start:8s} seed {seed}  {vname:28s} acc {r['accuracy']:.3f}  auc {r['roc_auc']:.3f}  "
                      f"{r['seconds']:6.1f} s", flush=True)
    table = render(results, args, data, torch.device("cpu"))
    print(table)
    if not args.no_doc:
        # the reading of the tables is written by a person; a rerun keeps it (check it still holds)
        old = DOC.read_text() if DOC.is_file() else ""
        if "## What it shows" in old:
            table += "\n" + old[old.index("## What it shows"):]
        DOC.parent.mkdir(parents=True, exist_ok=True)
        tmp = DOC.with_name(f".{DOC.name}.tmp")
        tmp.write_text(table)
        os.replace(tmp, DOC)
    return 0


def _ms(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def render(results, args, data: Path, device) -> str:
    n_img = sum(1 for p in data.rglob("*") if p.is_file())
    lines = [
        "# Learning on real medical images: nfx defaults vs a plain fastai Learner", "",
        f"Data: `{data.name}` ({n_img} files; see `benchmarks/real_data.py` for source and licence). "
        f"Model `{args.arch}` at {args.size} px, batch {args.bs}, {args.epochs} epochs per run (warm-up "
        "epochs included), CPU fp32. Validation: 20 % of the images (no patient ids in this set), the "
        "same split for every variant of a seed; the split changes with the seed. Metrics of the last "
        f"epoch, mean ± sd over seeds {args.seeds}"
        + (f" (ablation rows: seeds {args.ablation_seeds})" if args.ablation_seeds else "")
        + ". nfx defaults = squish resize, "
        "no augmentation, the schedule of the starting point, `--agc auto`. s / run is wall time on a "
        "shared 2-core machine (other jobs ran alongside): not a speed measurement.",
        "",
        f"Device: {device_line(device)}.", "",
        "Command: `python benchmarks/bench_learning.py " + " ".join(sys.argv[1:]) + "`", "",
    ]
    for start, by_variant in results.items():
        title = {"scratch": "From scratch (`--no-pretrained`)",
                 "local": "From local weights (`--weights`, pretrained here on another real set)"}[start]
        lines += [f"## {title}", "", "| variant | accuracy | ROC AUC | per-seed accuracy | per-seed AUC | s / run |",
                  "|---|---|---|---|---|---|"]
        for vname, rs in by_variant.items():
            acc = [r["accuracy"] for r in rs]
            auc = [r["roc_auc"] for r in rs]
            lines.append(f"| {vname} | {_ms(acc)} | {_ms(auc)} | {', '.join(f'{a:.2f}' for a in acc)} | "
                         f"{', '.join(f'{a:.2f}' for a in auc)} | {statistics.mean(r['seconds'] for r in rs):.0f} |")
        lines.append("")
        clip = [c for r in by_variant.get("nfx defaults", []) for c in (r.get("agc_clip_fraction") or [])
                if c is not None]
        if clip:
            lines += [f"AGC (`--agc auto`, λ = {_auto_lambda(args.bs)} at effective batch {args.bs}) clipped "
                      f"{min(clip):.1%}–{max(clip):.1%} of the units per epoch (mean {statistics.mean(clip):.1%}) "
                      "in the nfx-defaults runs.", ""]
    return "\n".join(lines) + "\n"


def _auto_lambda(bs: int) -> float:
    from nfx.config import auto_agc_clip

    return auto_agc_clip(bs)


def _kept(work: Path, name: str) -> tuple[Path, dict | None]:
    """(result file of a run, its result if a previous invocation finished it)."""
    f = work / f"{name}.json"
    return f, (json.loads(f.read_text()) if f.is_file() else None)


def _slug(over: dict) -> str:
    return "default" if not over else "-".join(f"{k}={v}" for k, v in sorted(over.items()))


def _write(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
