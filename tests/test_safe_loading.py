"""Checkpoints and weights files are never unpickled as code: a pickle whose __reduce__ would
create a marker file is refused with nfx's own error, and the marker never appears."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch

from nfx import api
from nfx.console import Printer
from nfx.errors import ModelError, RunError
from nfx.models.factory import create_model


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_file(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"state": {}, "history": [], "model": _Evil(marker), "opt": {}}, f)


def test_resume_refuses_a_crafted_last_pt(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    (run / "metrics.json").unlink()  # an unfinished run, so resume reads the checkpoint
    marker = tmp_path / "pwned"
    _evil_file(run / "checkpoints" / "last.pt", marker)
    with pytest.raises(RunError, match=r"last\.pt: not a readable nfx checkpoint .*nfx finetune --config"):
        api.resume(run, Printer(quiet=True))
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 10])
def test_resume_refuses_truncated_or_random_checkpoints(tiny_run, tmp_path, content):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    (run / "metrics.json").unlink()
    (run / "checkpoints" / "last.pt").write_bytes(content)
    with pytest.raises(RunError, match="not a readable nfx checkpoint"):
        api.resume(run, Printer(quiet=True))


def test_the_checkpoint_nfx_writes_loads_with_weights_only(tiny_run):
    ckpt = torch.load(tiny_run.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert isinstance(ckpt["opt"]["hypers"], list) and ckpt["history"]


def test_weights_file_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    w = tmp_path / "weights.pth"
    with open(w, "wb") as f:
        pickle.dump({"stem.conv.weight": _Evil(marker)}, f)
    with pytest.raises(ModelError):
        create_model("test_nfnet", 2, True, str(w), [])
    assert not marker.exists()
