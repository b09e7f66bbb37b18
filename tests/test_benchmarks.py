"""The one-command GPU suite (benchmarks/gpu_suite.sh): what can be checked without a GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the suite would run")
def test_gpu_suite_refuses_without_a_gpu_in_one_line():
    r = subprocess.run(["bash", str(SUITE)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "NFX_PY": sys.executable}, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "no CUDA GPU" in r.stderr and "GPU machine" in r.stderr


def test_gpu_suite_steps_exist_and_cover_the_gpu_tests():
    text = SUITE.read_text()
    subprocess.run(["bash", "-n", str(SUITE)], check=True)  # parses
    scripts = set(re.findall(r"benchmarks/(\w+\.py)", text))
    assert {"bench_agc.py", "bench_train.py", "bench_persample.py", "bench_inference.py"} <= scripts
    assert all((ROOT / "benchmarks" / s).is_file() for s in scripts)
    assert "tests/test_gpu.py" in text and "tests/test_distributed.py" in text
    limits = [int(n) for n in re.findall(r"^\s*step \S+ (\d+) ", text, re.M)]
    assert len(limits) == 6 and sum(limits) <= 600  # one command, at most 10 minutes
