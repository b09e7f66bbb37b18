"""Two training processes on the CPU (torchrun, gloo) through fastai's DistributedTrainer:
both ranks train in lock step on their own half, the run folder is written once, and the
result matches one process with the same effective batch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "sample_data" / "png"  # 160 images: 128 train / 32 valid
COMMON = ["--arch", "test_nfnet", "--no-pretrained", "--size", "32", "--epochs", "1", "--workers", "0"]


def _env(tmp: Path) -> dict[str, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1",
            "TMPDIR": str(tmp), "COLUMNS": "200"}


def _single(out: Path, name: str, *args: str, env) -> Path:
    r = subprocess.run([sys.executable, "-m", "nfx", "finetune", str(DATA), *COMMON, "--out", str(out),
                        "--name", name, *args], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return out / name


def _ddp(out: Path, name: str, *args: str, env, port: int):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "nfx", "finetune",
                           str(DATA), *COMMON, "--out", str(out), "--name", name, *args],
                          capture_output=True, text=True, env=env, timeout=600)


def _dist(a: dict, b: dict) -> float:
    return float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_effective_batch(tmp_path):
    scratch = tmp_path / "tmp"
    env = _env(scratch)
    out = tmp_path / "runs"
    # 2 ranks × micro-batch 4 × accum 2 = effective batch 16: the accumulation path (no_sync) too
    r = _ddp(out, "ddp", "--bs", "4", "--accum", "2", env=env, port=29600 + os.getpid() % 300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = re.findall(r"nfx rank (\d)/2: (\d+) optimizer steps, (\d+) training images per epoch on this rank, "
                       r"weights sha1 (\w+)", r.stderr)
    assert sorted(int(x[0]) for x in lines) == [0, 1], r.stderr[-2000:]  # both ranks trained
    assert {(x[1], x[2]) for x in lines} == {("8", "64")}  # 128 / 16 steps; each rank its half
    assert len({x[3] for x in lines}) == 1  # identical weights on both ranks after every step
    # the run folder is written once, by rank 0; rank 1's scratch folder is gone; one final table
    assert [p.name for p in out.iterdir()] == ["ddp"]
    assert not list(scratch.glob("nfx-rank*"))
    assert r.stderr.count("finetune finished") == 1
    cfg = (out / "ddp" / "config.json").read_text()
    assert '"world_size": 2' in cfg
    assert '"agc": 0.16' in cfg  # auto λ from the effective batch of all processes (16)
    ddp = load_file(str(out / "ddp" / "model.safetensors"))

    # one process, the same samples per optimizer step: micro-batch 8 × accum 2, and 16 × 1.
    # These two are the same mathematics, so their distance is the floating-point floor (Adam's
    # first steps are ≈ lr·sign(g): summation-order noise on near-zero gradient components moves
    # weights by up to lr per step); another seed is what "different" looks like.
    one = load_file(str(_single(out.parent / "single", "8x2", "--bs", "8", "--accum", "2", env=env) /
                        "model.safetensors"))
    one_b = load_file(str(_single(out.parent / "single", "16x1", "--bs", "16", env=env) / "model.safetensors"))
    other = load_file(str(_single(out.parent / "single", "seed", "--bs", "16", "--seed", "7", env=env) /
                          "model.safetensors"))
    floor, d, far = _dist(one, one_b), _dist(ddp, one), _dist(ddp, other)
    assert d <= 2.0 * floor + 1e-6, (d, floor)
    assert d <= 0.05 * far, (d, far)


@pytest.mark.slow
def test_resume_on_another_number_of_processes_is_refused(tmp_path):
    env = _env(tmp_path / "tmp")
    run = _single(tmp_path / "runs", "one", "--bs", "16", env=env)
    (run / "model.safetensors").unlink()
    (run / "metrics.json").unlink()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(29300 + os.getpid() % 300), "-m", "nfx", "finetune",
                        "--resume", str(run)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode != 0
    assert "trained on 1 process(es), resumed on 2" in r.stderr


@pytest.mark.slow
def test_two_processes_killed_then_resumed_equal_the_uninterrupted_run(tmp_path):
    import signal
    import time

    env = _env(tmp_path / "tmp")
    out = tmp_path / "runs"
    args = ["--epochs", "3", "--bs", "4", "--accum", "2"]
    port = 29000 + os.getpid() % 300
    full = _ddp(out, "full", *args, env=env, port=port)
    assert full.returncode == 0, full.stderr[-3000:]
    run = out / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port + 1), "-m", "nfx", "finetune", str(DATA), *COMMON[:-4], "--epochs", "3",
           "--workers", "0", "--bs", "4", "--accum", "2", "--out", str(out), "--name", "killed"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        hist = run / "history.csv"
        if hist.is_file() and len(hist.read_text().splitlines()) >= 2 and (run / "checkpoints" / "last.pt").is_file():
            import psutil  # (a dependency of accelerate)

            victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            for v in victims:  # the launcher and both ranks (torchrun starts them in their own groups)
                v.kill()
            psutil.wait_procs(victims[1:], timeout=30)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "model.safetensors").exists()
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(port + 2), "-m", "nfx", "finetune", "--resume", str(run)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming after epoch" in res.stderr
    digests = re.findall(r"weights sha1 (\w+)", res.stderr)
    assert len(digests) == 2 and len(set(digests)) == 1
    a, b = load_file(str(out / "full" / "model.safetensors")), load_file(str(run / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert sorted(p.name for p in out.iterdir()) == ["full", "killed"]


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["auto", "vmap"])
def test_per_sample_agc_on_two_processes_all_reduces_its_gradients(tmp_path, impl):
    # one-pass (auto): autograd fills p.grad, DDP's hooks all-reduce; vmap: the callback does
    env = _env(tmp_path / "tmp")
    out = tmp_path / "runs"
    r = _ddp(out, "ps", "--bs", "4", "--accum", "2", "--agc-mode", "per-sample", "--persample-impl", impl,
             env=env, port=29700 + os.getpid() % 100 + (100 if impl == "vmap" else 0))
    assert r.returncode == 0, r.stderr[-3000:]
    digests = re.findall(r"weights sha1 (\w+)", r.stderr)
    assert len(digests) == 2 and len(set(digests)) == 1  # without the all-reduce the ranks would drift apart
    if impl == "vmap":
        return
    ddp = load_file(str(out / "ps" / "model.safetensors"))
    one = load_file(str(_single(out.parent / "single", "ps", "--bs", "8", "--accum", "2", "--agc-mode",
                                "per-sample", env=env) / "model.safetensors"))
    other = load_file(str(_single(out.parent / "single", "ps7", "--bs", "8", "--accum", "2", "--agc-mode",
                                  "per-sample", "--seed", "7", env=env) / "model.safetensors"))
    assert _dist(ddp, one) <= 0.05 * _dist(ddp, other), (_dist(ddp, one), _dist(ddp, other))
