"""The README contract: its test command is what CI runs, and its quickstart works."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks():
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def _setup_commands():
    lines = [b.strip() for b in _bash_blocks() if b.strip().startswith("python3 -m venv .venv")]
    assert len(lines) == 2, "the README must have exactly two set-up commands"
    quick, tests = lines
    assert "pytest" in tests and "nfx finetune" in quick
    return quick, tests


def test_ci_runs_the_readme_test_command():
    _, tests = _setup_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def test_ci_runs_every_tier():
    """The README's command is the fast tier (-m "not slow"); CI runs the slow tier after it, so
    together they run every test."""
    _, tests = _setup_commands()
    assert tests.endswith('-m "not slow"')
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ".venv/bin/python -m pytest -q -m slow" in lines
    assert lines.index(".venv/bin/python -m pytest -q -m slow") > lines.index(tests)


@pytest.mark.slow
def test_readme_quickstart_reaches_08_accuracy(tmp_path):
    """Runs the quickstart's nfx commands (not the install) with this interpreter."""
    quick, _ = _setup_commands()
    steps = [s.strip() for s in quick.split("&&") if ".venv/bin/nfx" in s]
    assert [s.split()[1] for s in steps] == ["finetune", "evaluate", "export"]
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    env = {**os.environ, "COLUMNS": "200"}
    for s in steps:
        argv = [sys.executable, "-m", "nfx", *shlex.split(s)[1:]]
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "runs" / "quickstart"
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["accuracy"] >= 0.8
    assert (run / "model.onnx").is_file()
    # the validation metric rises over epochs (issue 4): best AUC clearly above the first epoch's
    import csv

    auc = [float(r["valid_roc_auc"]) for r in csv.DictReader(open(run / "history.csv"))]
    assert max(auc[1:]) > auc[0] + 0.05
