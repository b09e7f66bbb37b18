"""SIGKILL at (seeded) random points of `nfx finetune` and `nfx export`: whatever the moment, every
file left in the run folder is whole (never half-written), `--resume` — or, when the run died
before its first checkpoint, a fresh run — ends with the weights of an uninterrupted run, and an
interrupted export can simply be run again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ARGS = ["--arch", "test_nfnet", "--no-pretrained", "--epochs", "8", "--freeze-epochs", "0", "--bs", "4",
        "--size", "48", "--lr", "2e-3", "--workers", "0"]


def _cmd(*args):
    return [sys.executable, "-m", "nfx", *map(str, args)]


def _env():
    return {**os.environ, "COLUMNS": "200"}


def _rows(run: Path) -> int:
    try:
        return max(0, len((run / "history.csv").read_text().splitlines()) - 1)
    except OSError:
        return -1  # no history yet (run folder maybe not even created)


def _kill_when(cmd, run: Path, ready, delay: float) -> int:
    """Start `cmd`, wait until `ready(run)`, sleep `delay`, SIGKILL it; returns its exit status."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not ready(run):
        time.sleep(0.02)
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=60)


def _all_files_whole(run: Path) -> None:
    """Every file nfx wrote is complete: JSON parses, CSVs end in a newline, safetensors load."""
    for p in run.rglob("*"):
        if not p.is_file() or p.name.endswith(".tmp"):
            continue
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".csv":
            assert p.read_text().endswith("\n"), p
        elif p.suffix == ".safetensors":
            load_file(str(p))
        elif p.suffix == ".pt":
            from nfx.train.checkpoint import load_last

            load_last(run)


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_sigkill_at_random_points_of_finetune_then_resume(tiny_data, tmp_path):
    data = tiny_data / "png"
    full = subprocess.run(_cmd("finetune", data, *ARGS, "--out", tmp_path, "--name", "full"),
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert full.returncode == 0, full.stderr
    rng = random.Random(14)
    # (what must have happened first, a random extra delay): before any checkpoint (ingest or
    # the first epoch), in the middle, and at the end (last epoch, final writes). An epoch here
    # takes ~0.2 s on a fast CPU, so the mid-run kill follows its trigger closely and leaves six
    # epochs to go: a longer delay let fast CI machines finish before the kill landed.
    points = [("started", lambda r: r.is_dir(), rng.uniform(0.0, 0.3)),
              ("mid-run", lambda r: _rows(r) >= 2, rng.uniform(0.0, 0.05)),
              ("last epoch", lambda r: _rows(r) >= 7, rng.uniform(0.0, 0.6))]
    outcomes = []
    for i, (label, ready, delay) in enumerate(points):
        run = tmp_path / f"killed{i}"
        status = _kill_when(_cmd("finetune", data, *ARGS, "--out", tmp_path, "--name", run.name), run, ready, delay)
        if status == 0:  # finished before the kill landed: still a valid (uninterrupted) outcome
            _same_weights(tmp_path / "full", run)
            outcomes.append("finished")
            continue
        assert status == -signal.SIGKILL, (label, status)
        _all_files_whole(run)
        res = subprocess.run(_cmd("finetune", "--resume", run), capture_output=True, text=True, env=_env(),
                             timeout=600)
        if "no checkpoint to resume from" in res.stderr:  # died before its first epoch ended
            assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
            run = tmp_path / f"again{i}"
            outcomes.append("rerun")
            res = subprocess.run(_cmd("finetune", data, *ARGS, "--out", tmp_path, "--name", run.name),
                                 capture_output=True, text=True, env=_env(), timeout=600)
        elif "already complete" in res.stderr:  # killed after its last checkpoint, before the end
            assert res.returncode == 1, res.stderr
            outcomes.append("complete")
            continue
        else:
            outcomes.append("resumed")
        assert res.returncode == 0, (label, res.stderr[-2000:])
        _same_weights(tmp_path / "full", run)
        assert not list(run.rglob("*.tmp")), label  # resume cleans up after the killed writer
    print("outcomes:", outcomes)
    assert "resumed" in outcomes  # the kills did land mid-training

@pytest.mark.slow
def test_sigkill_during_export_then_export_again(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    for name in ("model.onnx", "MODEL.md"):
        (run / name).unlink(missing_ok=True)
    rng = random.Random(7)
    killed = 0
    for _ in range(3):
        status = _kill_when(_cmd("export", run, "--onnx"), run, lambda r: True, rng.uniform(0.5, 6.0))
        onnx = run / "model.onnx"
        if onnx.exists():  # written through the atomic writer: complete or absent, never half
            import onnx as onnx_lib

            onnx_lib.checker.check_model(str(onnx))
        _all_files_whole(run)
        if status == 0:
            break
        killed += 1
    again = subprocess.run(_cmd("export", run, "--onnx"), capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run / "model.onnx").is_file() and (run / "MODEL.md").is_file()
    assert killed >= 1 and not list(run.glob(".*.tmp"))  # the re-export removed the dead writers' temps


def _mount_tmpfs(where: Path, *opts: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(opts), "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_real_full_disk_keeps_the_last_good_checkpoint_and_the_run_resumes_elsewhere(tiny_data, tmp_path):
    """--out on a 4.6 MB tmpfs: epoch 1's checkpoints fit, epoch 2's last.pt does not (the atomic
    writer needs room for the new file beside the old one)."""
    import shutil

    small = tmp_path / "small"
    if not _mount_tmpfs(small, "size=4600k"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN); the simulated ENOSPC case "
                    "in tests/test_corpus.py still runs")
    args = ["--arch", "test_nfnet", "--no-pretrained", "--size", "32", "--epochs", "3", "--freeze-epochs", "0",
            "--bs", "8", "--workers", "0"]
    data = Path(__file__).resolve().parents[1] / "sample_data" / "png"
    try:
        r = subprocess.run(_cmd("finetune", data, *args, "--out", small, "--name", "a"), capture_output=True,
                           text=True, env=_env(), timeout=600)
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert r.returncode == 1 and lines[-1].startswith("error: ") and "No space left on device" in lines[-1]
        assert str(small / "a" / "checkpoints") in lines[-1] and "free space" in lines[-1]  # names the file
        assert sum(ln.startswith("error:") for ln in lines) == 1 and "Traceback" not in r.stderr
        from nfx.train.checkpoint import load_last

        assert load_last(small / "a")["state"]["epochs_done"] == 1  # the last good checkpoint, whole
        assert not list((small / "a").rglob("*.tmp"))
        shutil.copytree(small / "a", tmp_path / "moved")
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
    res = subprocess.run(_cmd("finetune", "--resume", tmp_path / "moved"), capture_output=True, text=True,
                         env=_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    full = subprocess.run(_cmd("finetune", data, *args, "--out", tmp_path, "--name", "full"), capture_output=True,
                          text=True, env=_env(), timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    _same_weights(tmp_path / "full", tmp_path / "moved")


def test_a_read_only_output_folder_is_one_clear_error(tmp_path):
    ro = tmp_path / "ro"
    if not _mount_tmpfs(ro, "size=1m", "ro"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN); the simulated EROFS case "
                    "in tests/test_corpus.py still runs")
    try:
        data = Path(__file__).resolve().parents[1] / "sample_data" / "png"
        r = subprocess.run(_cmd("finetune", data, "--arch", "test_nfnet", "--no-pretrained", "--out", ro),
                           capture_output=True, text=True, env=_env(), timeout=600)
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 1 and lines[-1].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    assert "Read-only file system" in lines[-1] and str(ro) in lines[-1]


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_fold_then_resume_the_parent(tiny_data, tmp_path):
    """`nfx finetune --folds 2` killed while fold 2 trains: `--resume PARENT` keeps fold 1, resumes
    fold 2 from its checkpoint, and both folds end with the uninterrupted run's weights."""
    args = [*ARGS, "--folds", "2", "--out", tmp_path]
    data = tiny_data / "png"
    full = subprocess.run(_cmd("finetune", data, *args, "--name", "full"), capture_output=True, text=True,
                          env=_env(), timeout=600)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    status = _kill_when(_cmd("finetune", data, *args, "--name", run.name), run / "fold-2", lambda r: _rows(r) >= 2, 0.0)
    assert status == -signal.SIGKILL, status
    _all_files_whole(run / "fold-1")
    _all_files_whole(run / "fold-2")
    res = subprocess.run(_cmd("finetune", "--resume", run), capture_output=True, text=True, env=_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "fold 1/2: done" in res.stderr and "fold 2/2: resuming" in res.stderr
    for f in ("fold-1", "fold-2"):
        _same_weights(tmp_path / "full" / f, run / f)
    assert (run / "metrics.json").is_file()
