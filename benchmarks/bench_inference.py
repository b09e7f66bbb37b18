"""Inference speed: ONNX Runtime (the file `nfx export` writes) vs torch eager, batch 1 and 16.

    python benchmarks/bench_inference.py [--models nf_regnet_b0,eca_nfnet_l0] [--size 192]
                                         [--batches 1,16] [--repeats 10] [--no-write]

Each model: random init, 2 classes, exported by nfx's own `export_onnx` (dynamo, opset 18,
checked against torch). Timed: the model call only (input already a tensor / array), fp32;
torch under `inference_mode`; ONNX Runtime with its default session options and the provider
nfx uses (CPU here; CUDA when onnxruntime-gpu is installed). Median of --repeats after two
warm-up calls. On CUDA the torch rows synchronise before reading the clock. Writes
docs/BENCHMARKS.md, section "## Inference", sub-section per device kind.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _median_ms(fn, repeats: int, sync=lambda: None) -> float:
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def bench(arch: str, size: int, batches: list[int], repeats: int) -> list[dict]:
    import numpy as np
    import onnxruntime as ort
    import timm
    import torch

    from nfx.export.onnx import INPUT, OUTPUT, export_onnx, local_providers
    from nfx.records import InputSpec, ModelInfo

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=2).eval()
    info = ModelInfo(arch=arch, classes=("a", "b"), input=InputSpec(size=size, mean=(0.5,) * 3, std=(0.5,) * 3,
                                                                    resize="squish"), weights_source="random init")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        rep = export_onnx(model, info, path)
        sess = ort.InferenceSession(str(path), providers=local_providers())
        provider = sess.get_providers()[0]
        model = model.to(dev)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        for bs in batches:
            x = np.random.default_rng(0).standard_normal((bs, 3, size, size), dtype=np.float32)
            xt = torch.from_numpy(x).to(dev)
            with torch.inference_mode():
                t_torch = _median_ms(lambda xt=xt: model(xt), repeats, sync)
            t_ort = _median_ms(lambda x=x: sess.run([OUTPUT], {INPUT: x}), repeats)
            rows.append({"model": arch, "bs": bs, "torch_ms": t_torch, "ort_ms": t_ort, "provider": provider,
                         "max_abs_diff": rep["max_abs_diff"]})
            print(f"{arch:14s} bs {bs:3d}  torch {t_torch:8.1f} ms  onnxruntime {t_ort:8.1f} ms  "
                  f"({provider})", flush=True)
    return rows


def render(rows: list[dict], args, device_line: str) -> str:
    out = [f"Device: {device_line}.", "",
           f"Command: `python benchmarks/bench_inference.py --models {args.models} --size {args.size} "
           f"--batches {args.batches} --repeats {args.repeats}`", "",
           f"{args.size} px, fp32, random init, 2 classes; median of {args.repeats} calls after 2 warm-up calls; "
           "the model call only (decoding and resizing excluded).", "",
           "| model | batch | torch eager ms | ONNX Runtime ms | ORT ÷ torch | images/s (ORT) | ORT provider |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['bs']} | {r['torch_ms']:.1f} | {r['ort_ms']:.1f} | "
                   f"{r['ort_ms'] / r['torch_ms']:.2f} | {1000 * r['bs'] / r['ort_ms']:.0f} | {r['provider']} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="nf_regnet_b0,eca_nfnet_l0")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    import torch
    from _doc import device_line, write_subsection

    rows = []
    for arch in args.models.split(","):
        rows += bench(arch, args.size, [int(b) for b in args.batches.split(",")], args.repeats)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    body = render(rows, args, device_line(dev))
    print(body)
    if not args.no_write:
        write_subsection("Inference", "GPU" if dev.type == "cuda" else "CPU", body,
                         intro="ONNX Runtime (the exported file `nfx predict` uses) vs torch eager; "
                               "`benchmarks/bench_inference.py`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
