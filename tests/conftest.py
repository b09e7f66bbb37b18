"""Shared fixtures: offline environment, a tiny synthetic dataset, one tiny trained run.

Tests use timm's `test_nfnet` (0.19 M parameters, the same layer types as the real NFNets)
at 64 px, so the whole suite runs in minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import tempfile
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ.setdefault("NFX_CACHE_DIR", tempfile.mkdtemp(prefix="nfx-test-cache-"))
warnings.filterwarnings("ignore", category=FutureWarning)

import pytest  # noqa: E402

TINY_SIZE = 64


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """12 synthetic patients × 2 eyes, PNG and DICOM, 64 px."""
    from nfx.data.synthetic import generate

    root = tmp_path_factory.mktemp("data")
    generate(root, n_patients=12, size=TINY_SIZE, seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """One finished `finetune` run on the tiny DICOM data (test_nfnet, from scratch)."""
    from nfx import api
    from nfx.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from nfx.console import Printer

    out = tmp_path_factory.mktemp("runs")
    cfg = RunConfig(
        data=DataConfig(path=str(tiny_data / "dicom"), size=TINY_SIZE, num_workers=0, aug="light"),
        model=ModelConfig(arch="test_nfnet", pretrained=False),
        train=TrainConfig(epochs=1, freeze_epochs=1, bs=4, accum=2, lr=1e-3, agc=0.16),
        out=str(out),
        name="tiny",
    )
    return api.finetune(cfg, Printer(quiet=True))


@pytest.fixture
def with_learner_cb(monkeypatch):
    """Install an extra fastai callback into every Learner nfx's fit builds (to simulate a
    crash or divergence at a chosen point of a real training run). Returns a function that
    removes it again."""
    from nfx.train import fit as fit_mod

    def install(cb):
        orig = fit_mod.build_learner

        def build(*a, **k):
            w = orig(*a, **k)
            w.learn.add_cb(cb)
            return w

        monkeypatch.setattr(fit_mod, "build_learner", build)
        return monkeypatch.undo

    return install


@pytest.fixture(scope="session", autouse=True)
def _sample_data_stays_untouched():
    """No test may write into sample_data/ (fastai's lr_find once left a models/ folder there,
    which the next run then read as an empty class)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "sample_data"
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    yield
    after = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert after == before, f"tests changed sample_data/: {sorted(set(after) ^ set(before))[:5]}"
