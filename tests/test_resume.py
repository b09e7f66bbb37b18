"""Checkpoints and resume: a run killed with SIGKILL mid-training and resumed ends with the same
weights and validation metrics as an uninterrupted run (CPU, same seed)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from nfx.train.checkpoint import load_last

ARGS = ["--arch", "test_nfnet", "--no-pretrained", "--epochs", "5", "--freeze-epochs", "1", "--bs", "4",
        "--accum", "2", "--size", "64", "--lr", "2e-3", "--ema", "0.9", "--workers", "0"]


def _cmd(*args):
    return [sys.executable, "-m", "nfx", *map(str, args)]


def _env():
    return {**os.environ, "COLUMNS": "200"}


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tiny_data, tmp_path):
    data = tiny_data / "dicom"
    full = subprocess.run(_cmd("finetune", data, *ARGS, "--out", tmp_path, "--name", "full"),
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert full.returncode == 0, full.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cmd("finetune", data, *ARGS, "--out", tmp_path, "--name", "killed"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        hist = run / "history.csv"
        # history.csv gets its row just before last.pt is written: kill somewhere after epoch 2
        if hist.is_file() and len(hist.read_text().splitlines()) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "metrics.json").exists()
    killed_after = load_last(run)["state"]["epochs_done"]
    assert 1 <= killed_after < 6

    res = subprocess.run(_cmd("finetune", "--resume", run), capture_output=True, text=True, env=_env(), timeout=600)
    assert res.returncode == 0, res.stderr
    assert "resuming after epoch" in res.stderr

    for name in ("model.safetensors", "checkpoints/best.safetensors"):
        a = load_file(str(tmp_path / "full" / name))
        b = load_file(str(run / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"{name}: {k}")
    last_a, last_b = load_last(tmp_path / "full"), load_last(run)  # final raw weights, optimizer
    for k in last_a["model"]:
        torch.testing.assert_close(last_b["model"][k], last_a["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    ha = list(csv.DictReader(open(tmp_path / "full" / "history.csv")))
    hb = list(csv.DictReader(open(run / "history.csv")))
    assert [r["epoch"] for r in hb] == [str(i) for i in range(1, 7)]
    for ra, rb in zip(ha, hb):
        assert float(ra["valid_loss"]) == pytest.approx(float(rb["valid_loss"]), rel=1e-5, abs=1e-6)

    again = subprocess.run(_cmd("finetune", "--resume", run), capture_output=True, text=True, env=_env())
    assert again.returncode == 1 and "already complete" in again.stderr


def test_resume_without_checkpoint_is_a_clear_error(tiny_run, tmp_path):
    import shutil

    from nfx import api
    from nfx.errors import RunError

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run.run_dir, copy)
    shutil.rmtree(copy / "checkpoints")
    with pytest.raises(RunError, match="no checkpoint"):
        api.resume(copy)


@pytest.mark.parametrize("stop_after", [1, 3])  # 1 = at the frozen → unfrozen boundary
def test_interrupted_in_process_then_resumed_replays_the_run(tiny_data, tmp_path, stop_after, with_learner_cb):
    from fastai.callback.core import Callback

    from nfx import api
    from nfx.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from nfx.console import Printer

    def cfg(name):
        # augmentation on: resuming must replay its random draws too
        return RunConfig(data=DataConfig(path=str(tiny_data / "dicom"), size=64, num_workers=0, aug="light"),
                         model=ModelConfig(arch="test_nfnet", pretrained=False),
                         train=TrainConfig(epochs=3, freeze_epochs=1, bs=4, accum=2, lr=2e-3, agc=0.16, ema=0.9),
                         out=str(tmp_path), name=name)

    full = api.finetune(cfg("full"), Printer(quiet=True))

    class Interrupt(Callback):
        order = 95  # after the checkpoint of the epoch is written

        def after_epoch(self):
            if len(list((tmp_path / "cut").glob("history.csv"))) and \
                    len((tmp_path / "cut" / "history.csv").read_text().splitlines()) - 1 >= stop_after:
                raise KeyboardInterrupt

    remove = with_learner_cb(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        api.finetune(cfg("cut"), Printer(quiet=True))
    remove()
    assert load_last(tmp_path / "cut")["state"]["epochs_done"] == stop_after
    resumed = api.resume(tmp_path / "cut", Printer(quiet=True))
    assert [h["valid_loss"] for h in resumed.history] == pytest.approx([h["valid_loss"] for h in full.history],
                                                                       rel=1e-6, abs=1e-7)
    a, b = load_last(tmp_path / "full")["model"], load_last(tmp_path / "cut")["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)


def test_a_kill_during_a_checkpoint_write_keeps_the_old_file_and_resume_removes_the_temp(tiny_run, tmp_path):
    import shutil

    from nfx import api
    from nfx.console import Printer
    from nfx.errors import RunError

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    # a process killed with SIGKILL in the middle of writing last.pt through nfx's atomic writer
    code = ("import os, signal, sys; from pathlib import Path; from nfx.runs import atomic_path\n"
            f"with atomic_path(Path({str(last)!r})) as tmp:\n"
            "    with open(tmp, 'wb') as f:\n"
            "        f.write(b'half a checkpoint' * 1000); f.flush()\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert p.returncode == -signal.SIGKILL
    assert last.read_bytes() == before  # the good checkpoint was never replaced
    stale = list(last.parent.glob(".last.pt.*.tmp"))
    assert len(stale) == 1 and stale[0].stat().st_size > 0
    # a temp file of a live writer (this process) is left alone
    live = last.parent / f".best.safetensors.{os.getpid()}.1.1.tmp"
    live.write_bytes(b"in progress")
    with pytest.raises(RunError, match="already complete"):
        api.resume(run, Printer(quiet=True))
    assert not stale[0].exists() and live.exists()
