"""`nfx compare`: a tiny real grid (test_nfnet vs timm's BatchNorm test_byobnet × two
micro-batches at one effective batch), resumable, with its table, plot and JSON."""

from __future__ import annotations

import json

import pytest

from nfx import api
from nfx.console import Printer
from nfx.errors import ConfigError, RunError


def _cfg(data, out, **kw):
    base = dict(data=str(data), models=("test_nfnet", "test_byobnet"), micro_batches=(2, 4), effective_batch=4,
                agc=(True,), seeds=(1,), size=64, epochs=1, out=str(out), name="grid",
                extra=("--workers", "0", "--aug", "none"))
    base.update(kw)
    return api.CompareConfig(**base)


@pytest.mark.slow
def test_compare_runs_the_grid_and_resumes(tiny_data, tmp_path):
    cfg = _cfg(tiny_data / "png", tmp_path)
    res = api.compare(cfg, Printer(quiet=True))
    d = tmp_path / "grid"
    assert len(res["cells"]) == 4 and len(res["rows"]) == 4
    for c in res["cells"]:
        run = d / "runs" / c["cell"]
        saved = json.loads((run / "config.json").read_text())["train"]
        # the effective batch is kept by --accum, AGC λ from that effective batch
        assert saved["bs"] * saved["accum"] == 4 and saved["bs"] == c["micro_batch"]
        assert saved["agc"] == pytest.approx(0.16) and c["agc_lambda"] == pytest.approx(0.16)
        assert 0 <= c["accuracy"] <= 1 and c["images_per_s"] > 0 and c["peak_rss_mb"] > 50
    assert {(r["arch"], r["micro_batch"], r["accum"]) for r in res["rows"]} == {
        ("test_nfnet", 2, 2), ("test_nfnet", 4, 1), ("test_byobnet", 2, 2), ("test_byobnet", 4, 1)}
    assert (d / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((d / "compare.json").read_text())["rows"] == res["rows"]
    assert (d / "compare.csv").read_text().splitlines()[0].startswith("arch,micro_batch,accum,agc")
    # resumable: a finished cell is never trained again (its run folder stays untouched)
    stamp = {c["cell"]: (d / "runs" / c["cell"] / "model.safetensors").stat().st_mtime_ns for c in res["cells"]}
    again = api.compare(cfg, Printer(quiet=True))
    assert again["cells"] == res["cells"]
    assert stamp == {c: (d / "runs" / c / "model.safetensors").stat().st_mtime_ns for c in stamp}
    # other settings in the same folder are refused, not mixed in
    with pytest.raises(ConfigError, match="other settings"):
        api.compare(_cfg(tiny_data / "png", tmp_path, epochs=2), Printer(quiet=True))


def test_compare_validates_the_grid(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="must divide"):
        api.compare(_cfg(tiny_data / "png", tmp_path, micro_batches=(3,)), Printer(quiet=True))
    with pytest.raises(ConfigError, match="not a folder"):
        api.compare(_cfg(tmp_path / "missing", tmp_path), Printer(quiet=True))


def test_a_failing_cell_names_the_cell_and_the_command(tiny_data, tmp_path):
    cfg = _cfg(tiny_data / "png", tmp_path, models=("no_such_arch",), micro_batches=(4,), name="bad")
    with pytest.raises(RunError, match=r"no_such_arch-bs4x1-agcon-s1 failed: .*no_such_arch.*reproduce with: nfx finetune"):
        api.compare(cfg, Printer(quiet=True))


@pytest.mark.slow
def test_compare_with_folds_scores_each_cell_out_of_fold(tiny_data, tmp_path):
    cfg = _cfg(tiny_data / "dicom", tmp_path, models=("test_nfnet",), micro_batches=(4,), folds=2, name="cv")
    res = api.compare(cfg, Printer(quiet=True))
    (cell,) = res["cells"]
    parent = tmp_path / "cv" / "runs" / cell["cell"]
    ev = json.loads((parent / "evaluation.json").read_text())  # written by the cell's `nfx evaluate PARENT`
    assert (parent / "fold-1" / "model.safetensors").is_file() and (parent / "fold-2" / "model.safetensors").is_file()
    assert cell["accuracy"] == ev["accuracy"] and cell["roc_auc"] == ev["roc_auc"]
    assert cell["n_images_out_of_fold"] == 24 and cell["roc_auc_ci"] == ev["roc_auc_ci"]
    assert res["rows"][0]["roc_auc_ci"] == cell["roc_auc_ci"]


def test_frozen_batchnorm_cells_only_for_batchnorm_nets_and_rows_carry_a_t_interval(tiny_data, tmp_path):
    from nfx.workflows.compare import finetune_args, summarise

    cfg = _cfg(tiny_data / "png", tmp_path, micro_batches=(2,), seeds=(1, 2), bn=("train", "frozen")).validate()
    names = sorted(c.name for c in cfg.cells())
    assert names == ["test_byobnet-bs2x2-agcon-bnfrozen-s1", "test_byobnet-bs2x2-agcon-bnfrozen-s2",
                     "test_byobnet-bs2x2-agcon-s1", "test_byobnet-bs2x2-agcon-s2",
                     "test_nfnet-bs2x2-agcon-s1", "test_nfnet-bs2x2-agcon-s2"]  # no frozen NF cell
    frozen = next(c for c in cfg.cells() if c.bn == "frozen")
    args = finetune_args(cfg, frozen, tmp_path)
    assert args[args.index("--bn") + 1] == "frozen"
    assert "--bn" not in finetune_args(cfg, next(c for c in cfg.cells() if c.bn == "train"), tmp_path)
    fake = [{"arch": c.arch, "micro_batch": c.micro_batch, "agc": c.agc, "bn": c.bn,
             "accuracy": 0.6 + 0.1 * c.seed, "roc_auc": 0.7, "images_per_s": 1.0, "peak_rss_mb": 1.0}
            for c in cfg.cells()]
    rows = {(r["arch"], r["bn"]): r for r in summarise(cfg, fake)}
    assert set(rows) == {("test_nfnet", "train"), ("test_byobnet", "train"), ("test_byobnet", "frozen")}
    r = rows[("test_byobnet", "frozen")]
    assert r["accuracy"] == pytest.approx(0.75) and r["accuracy_sd"] == pytest.approx(0.0707, abs=1e-4)
    # mean ± t(0.975, 1) · sd / √2 = 0.75 ± 12.706 · 0.05
    assert r["accuracy_ci95"] == pytest.approx([0.75 - 0.6353, 0.75 + 0.6353], abs=1e-3)
    assert r["roc_auc_ci95"] == pytest.approx([0.7, 0.7])
    with pytest.raises(ConfigError, match="--bn eval"):
        _cfg(tiny_data / "png", tmp_path, bn=("eval",)).validate()
