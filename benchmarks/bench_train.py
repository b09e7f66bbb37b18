"""Training-loop throughput (issue 5): nfx's fastai loop vs the raw timm step, NF vs EfficientNet,
torch.compile vs eager. Prints a table and writes the `## Training throughput` section of
docs/BENCHMARKS.md for the device it ran on.

Raw step = the plain PyTorch loop on tensors already on the device: forward, loss, backward,
(AGC for NF models), AdamW step (torch's default, and torch's fused AdamW as the stricter arm),
under bf16 autocast on CUDA (fp32 on CPU), channels_last on CUDA.
nfx loop = `learn.fit` of nfx's real wiring (build_learner: plain Learner, timm head, AGC callback,
MixedPrecision) over nfx's real DataLoaders reading decoded-image cache entries (.npy, float16),
with augmentation off so the numbers compare the loop, not albumentations.

    python benchmarks/bench_train.py                      # CPU-sized defaults (+ opt.step() alone)
    python benchmarks/bench_train.py --gpu-suite          # the issue's H100 configurations
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _doc import device_line, write_subsection  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def raw_step_ms(arch, size, bs, device, steps, agc=True, compile_=False, fused=False):
    import timm

    from nfx.models.factory import head_and_body, is_nf
    from nfx.train import agc as agc_mod

    model = timm.create_model(arch, num_classes=2).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if compile_:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True if fused else None)
    _, body = head_and_body(model)
    x = torch.randn(bs, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (bs,), device=device)
    use_agc = agc and is_nf(arch)
    clipper = agc_mod.Clipper()  # kept across steps, as a training loop keeps it

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if use_agc:
            clipper(body, 0.04)
        opt.step()
        opt.zero_grad(set_to_none=True)

    warm = 3 if not compile_ else 5
    for _ in range(warm):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t) / steps * 1000


def nfx_loop_ms(arch, size, bs, device, steps, workers):
    import timm
    from fastai.callback.core import Callback, CancelFitException

    from nfx.data.dataloaders import make_dataloaders
    from nfx.train.learner import build_learner

    tmp = Path(tempfile.mkdtemp(prefix="nfx-bench-"))
    n = bs * (steps + 4)
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        p = tmp / f"{i}.npy"
        np.save(p, rng.random((size, size, 3), dtype=np.float32).astype(np.float16))
        entries.append(p)
    targets = [i % 2 for i in range(n)]
    dls = make_dataloaders((entries, targets), (entries[:bs], targets[:bs]), bs=bs, mean=(0.5,) * 3,
                           std=(0.5,) * 3, aug="none", flip=False, num_workers=workers, device=device, seed=0)
    model = timm.create_model(arch, num_classes=2)
    w = build_learner(dls, model, num_classes=2, wd=0.0, precision="bf16" if device.type == "cuda" else "fp32",
                      accum=1, agc=0.04, device=device)
    times = []

    class Timer(Callback):
        order = 100

        def before_batch(self):
            if self.training and self.iter == 3:
                _sync(device)
                self.t0 = time.perf_counter()

        def after_batch(self):
            if self.training and self.iter == 3 + steps - 1:
                _sync(device)
                times.append((time.perf_counter() - self.t0) / steps * 1000)
                raise CancelFitException()

    w.learn.unfreeze()
    w.learn.fit(1, 1e-4, cbs=[Timer()])
    return times[0]


def optimizer_step_ms(arch, steps=10):
    """opt.step() alone on random gradients: fastai's Adam, nfx's fused Adam, torch's AdamW."""
    import timm
    from fastai.optimizer import Adam

    from nfx.train.optim import fused_adam

    model = timm.create_model(arch, num_classes=2)
    ps = list(model.parameters())
    for p in ps:
        p.grad = torch.randn_like(p)
    makers = {"fastai Adam": lambda: Adam(ps, lr=1e-3, wd=0.01),
              "nfx fused_adam": lambda: fused_adam(ps, lr=1e-3, wd=0.01),
              "torch AdamW (default)": lambda: torch.optim.AdamW(ps, lr=1e-3, betas=(0.9, 0.99), eps=1e-5),
              "torch AdamW (fused)": lambda: torch.optim.AdamW(ps, lr=1e-3, betas=(0.9, 0.99), eps=1e-5, fused=True)}
    out = {}
    for name, make in makers.items():
        opt = make()
        for _ in range(3):
            opt.step()
        t = time.perf_counter()
        for _ in range(steps):
            opt.step()
        out[name] = (time.perf_counter() - t) / steps * 1000
    return out


def _median(xs):
    return float(np.median(xs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu-suite", action="store_true", help="the issue's H100 configurations")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of raw / fused raw / nfx per model")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    steps = a.steps or (30 if gpu else 20)
    workers = min(8, os.cpu_count() or 1) if gpu else 0
    if a.gpu_suite or gpu:
        loop_cfgs = [("dm_nfnet_f0", 192, 64), ("resnet50", 224, 64)]
        nf_vs_eff = [("dm_nfnet_f1", 224, 64), ("tf_efficientnet_b7", 600, 8)]
        compile_cfgs = [("nf_resnet50", 224, 64), ("resnet50", 224, 64)]
        opt_archs = []
    else:
        loop_cfgs = [("nf_resnet26", 64, 16), ("nf_regnet_b0", 64, 16), ("nf_regnet_b0", 96, 16)]
        nf_vs_eff = [("nf_resnet26", 96, 16), ("efficientnet_b0", 192, 16)]
        compile_cfgs = []
        opt_archs = ["nf_resnet26", "nf_regnet_b0", "dm_nfnet_f0"]

    lines = ["| model | px | batch | raw step ms (torch AdamW default) | raw step ms (fused AdamW) | nfx loop ms | "
             "img/s raw fused | img/s nfx | nfx ÷ raw fused (median, range over rounds) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arch, size, bs in loop_cfgs:
        raw, fused, loop, ratios = [], [], [], []
        for _ in range(a.rounds):  # interleaved, so drift of a shared machine hits every arm alike
            raw.append(raw_step_ms(arch, size, bs, device, steps))
            fused.append(raw_step_ms(arch, size, bs, device, steps, fused=True))
            loop.append(nfx_loop_ms(arch, size, bs, device, steps, workers))
            ratios.append(fused[-1] / loop[-1])
        r, f, lp, q = _median(raw), _median(fused), _median(loop), _median(ratios)
        print(f"loop  {arch:<16} {size}px bs{bs}: raw {r:.1f} ms, raw fused {f:.1f} ms, nfx {lp:.1f} ms, "
              f"nfx/raw-fused {q:.2f} ({min(ratios):.2f}–{max(ratios):.2f})", flush=True)
        lines.append(f"| {arch} | {size} | {bs} | {r:.1f} | {f:.1f} | {lp:.1f} | {bs / f * 1000:.0f} | "
                     f"{bs / lp * 1000:.0f} | **{q:.2f}** ({min(ratios):.2f}–{max(ratios):.2f}) |")
    if opt_archs:
        lines += ["", "`opt.step()` alone (ms, random gradients, same hyper-parameters):", "",
                  "| model | fastai Adam | nfx fused_adam | torch AdamW (default) | torch AdamW (fused) |",
                  "|---|---|---|---|---|"]
        for arch in opt_archs:
            o = optimizer_step_ms(arch)
            print(f"opt.step {arch}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in o.items()), flush=True)
            lines.append(f"| {arch} | " + " | ".join(f"{v:.1f}" for v in o.values()) + " |")
    lines += ["", "| NF vs EfficientNet (raw step, AGC on for NF) | px | batch | ms/step | img/s |", "|---|---|---|---|---|"]
    ips = {}
    for arch, size, bs in nf_vs_eff:
        raw = raw_step_ms(arch, size, bs, device, steps)
        ips[arch] = bs / raw * 1000
        print(f"speed {arch:<20} {size}px bs{bs}: {raw:.1f} ms/step, {ips[arch]:.1f} img/s", flush=True)
        lines.append(f"| {arch} | {size} | {bs} | {raw:.1f} | {ips[arch]:.1f} |")
    (nf, eff) = (nf_vs_eff[0][0], nf_vs_eff[1][0])
    lines.append(f"\nNF ÷ EfficientNet images/s: {nf} / {eff} = **{ips[nf] / ips[eff]:.1f}×**")
    print(f"NF / EfficientNet: {ips[nf] / ips[eff]:.2f}x")
    if compile_cfgs:
        lines += ["", "| compile vs eager (raw step, no AGC) | px | batch | eager ms | compiled ms |", "|---|---|---|---|---|"]
    for arch, size, bs in compile_cfgs:
        eager = raw_step_ms(arch, size, bs, device, steps, agc=False)
        comp = raw_step_ms(arch, size, bs, device, steps, agc=False, compile_=True)
        print(f"compile {arch}: eager {eager:.1f} ms, compiled {comp:.1f} ms")
        lines.append(f"| {arch} | {size} | {bs} | {eager:.1f} | {comp:.1f} |")
    if not gpu:
        lines.append(
            "\nRaw step: forward, loss, backward, AGC (nfx's `clip_`, λ 0.04), AdamW step on one random batch held in "
            "memory — nothing else. nfx loop: `learn.fit` with nfx's real wiring over its real DataLoaders (cache "
            "entries read from disk and collated in the training process, 0 workers), its callbacks and its "
            "default optimizer (`nfx.train.optim.fused_adam`: fastai's Adam — same hyper-parameters, state and "
            "numbers, tests/test_optim.py — stepped by torch's fused kernel). The target (≥ 0.95×) is judged "
            "against the stricter raw arm, the one with torch's fused AdamW; against torch's default AdamW "
            "(per-tensor on the CPU) nfx is faster. Reading the loader alone costs ~3 ms a batch at 64 px. "
            "Single timings on this 2-core VM move by ±10 %, hence the interleaved rounds and medians. "
            "EfficientNet here is efficientnet_b0 at 192 px vs nf_resnet26 at 96 px (CPU-sized stand-ins), not "
            "the issue's dm_nfnet_f1 vs tf_efficientnet_b7.")
    body = (f"Device: {device_line(device)}. {steps} timed steps after warm-up, {a.rounds} interleaved rounds; "
            f"{'bf16 autocast, channels_last' if gpu else 'fp32'}; DataLoader workers {workers}.\n"
            f"Command: `python benchmarks/bench_train.py{' --gpu-suite' if a.gpu_suite else ''}"
            f"{f' --rounds {a.rounds}' if a.rounds != 5 else ''}{f' --steps {a.steps}' if a.steps else ''}`\n\n" + "\n".join(lines))
    if not a.no_write:
        write_subsection("Training throughput", "CUDA" if gpu else "CPU", body,
                         intro="nfx's fastai loop vs the raw timm step; NF vs EfficientNet; compile vs eager "
                               "(issue 5). Written by benchmarks/bench_train.py.")
        print("wrote section 'Training throughput' of docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
