"""`evaluate` and `explain` on the tiny trained run: thresholds chosen on validation and carried
to other data, TTA, per-patient metrics, plots, errors; Grad-CAM overlays."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nfx import api, runs
from nfx.console import Printer
from nfx.errors import ConfigError, DataError
from nfx.evaluate.metrics import binary_at_threshold, threshold_for_sensitivity, youden_threshold

Q = Printer(quiet=True)


def _valid_scores(run_dir):
    rows = list(csv.DictReader(open(run_dir / "predictions.csv")))
    return np.array([r["label"] == "glaucoma" for r in rows], int), np.array([float(r["p_glaucoma"]) for r in rows])


def test_youden_chosen_on_validation_and_applied_elsewhere(tiny_run, tiny_data):
    d = tiny_run.run_dir
    ev = api.evaluate(d, printer=Q, n_bootstrap=100)
    assert ev["split"] == "valid" and ev["threshold"] == 0.5 and ev["threshold_source"] == "default"
    vy, vp = _valid_scores(d)
    yt = youden_threshold(vy, vp)
    yd = ev["operating_points"]["Youden"]
    assert yd["threshold"] == pytest.approx(yt, abs=1e-6) and "in-sample" in yd["chosen_on"]
    assert any("in-sample" in w for w in ev["warnings"])
    # on another folder the same threshold is applied, not re-chosen there
    ext = api.evaluate(d, str(tiny_data / "png"), Q, n_bootstrap=100)
    yd2 = ext["operating_points"]["Youden"]
    assert yd2["threshold"] == pytest.approx(yt, abs=1e-6) and yd2["chosen_on"] == "valid split"
    rows = list(csv.DictReader(open(d / "predictions.csv")))
    y = np.array([r["label"] == "glaucoma" for r in rows], int)
    p = np.array([float(r["p_glaucoma"]) for r in rows])
    # predictions.csv holds probabilities rounded to 6 decimals and the Youden threshold is one
    # of the scores: at most the one image lying on the threshold may flip
    assert abs(yd2["sensitivity"] - binary_at_threshold(y, p, yt)["sensitivity"]) <= 1 / y.sum() + 1e-9
    assert not any("in-sample" in w for w in ext["warnings"])
    # PNGs carry no patient id: the report says the intervals treat each image as a patient
    assert any("no patient ids" in w for w in ext["warnings"])


def test_target_sensitivity_sets_the_headline_threshold(tiny_run, tiny_data):
    d = tiny_run.run_dir
    api.evaluate(d, printer=Q, n_bootstrap=50)
    vy, vp = _valid_scores(d)
    ev = api.evaluate(d, str(tiny_data / "png"), Q, n_bootstrap=50, target_sensitivity=0.9)
    t = threshold_for_sensitivity(vy, vp, 0.9)
    assert ev["threshold"] == pytest.approx(t, abs=1e-6)  # reported rounded to 6 decimals
    assert "sensitivity 0.9" in ev["threshold_source"]
    assert ev["operating_points"]["sensitivity ≥ 0.9"]["threshold"] == pytest.approx(t, abs=1e-6)
    ev = api.evaluate(d, printer=Q, n_bootstrap=50, threshold=0.3)
    assert ev["threshold"] == 0.3 and ev["operating_points"]["user"]["threshold"] == 0.3


def test_tta_averages_original_and_flipped(tiny_run):
    d = tiny_run.run_dir
    ev = api.evaluate(d, printer=Q, n_bootstrap=20, tta=True, plots=False)
    assert ev["tta"] is True and "plots" not in ev
    rows = list(csv.DictReader(open(d / "predictions.csv")))
    run = api.load_run(d)
    paths = [r["file"] for r in rows]
    p0, _ = api.predict_probs(run.model, paths, run.info, None, Q)

    class Flip(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x.flip(-1))

    p1, _ = api.predict_probs(Flip(run.model), paths, run.info, None, Q)
    got = np.array([[float(r["p_glaucoma"]), float(r["p_normal"])] for r in rows])
    np.testing.assert_allclose(got, (p0 + p1) / 2, atol=2e-6)
    assert not np.allclose(p0, p1)  # the flip really changes the input


def test_per_patient_and_outputs(tiny_run, tiny_data):
    d = tiny_run.run_dir
    ev = api.evaluate(d, str(tiny_data / "dicom"), Q, n_bootstrap=100, per_patient=True)
    pl = ev["patient_level"]
    # the run's 20 training images are in that folder: copies of training images, left out and listed
    assert len(ev["copies_of_training"]) == 20
    assert any("copies of training images" in w for w in ev["warnings"])
    assert pl["n_patients"] == 2 and sum(map(sum, pl["confusion_matrix"])) == 2
    assert ev["n_images"] == 4 and ev["n_patients"] == 2
    on_disk = json.loads((d / "evaluation.json").read_text())
    assert on_disk == json.loads(json.dumps(ev))
    assert on_disk["provenance"]["splits"]["valid"] == {"images": 4, "patients": 2}
    for k in ("pr_auc", "f1", "mcc", "ece", "brier", "per_class", "calibration"):
        assert k in on_disk, k
    assert 0 <= on_disk["ece"] <= 1 and 0 <= on_disk["brier"] <= 2


def test_evaluate_errors(tiny_run):
    with pytest.raises(DataError, match="no images in split 'test'"):
        api.evaluate(tiny_run.run_dir, printer=Q, split="test")
    with pytest.raises(ConfigError, match="not both"):
        api.evaluate(tiny_run.run_dir, printer=Q, threshold=0.4, target_sensitivity=0.9)
    with pytest.raises(ConfigError, match="--target-sensitivity"):
        api.evaluate(tiny_run.run_dir, printer=Q, target_sensitivity=1.5)


def test_explain_writes_gradcam_overlays(tiny_run, tiny_data, tmp_path):
    files = sorted(str(p) for p in (tiny_data / "png" / "glaucoma").glob("*.png"))[:2]
    res = api.explain(tiny_run.run_dir, files, tmp_path / "cam", Q)
    assert [r["file"] for r in res] == files
    from PIL import Image

    for r in res:
        assert r["layer"] == "final_conv" and r["prediction"] in ("glaucoma", "normal")
        im = Image.open(r["overlay"])
        assert im.size[0] == 2 * im.size[1] >= 512  # input | overlay, upscaled
    res = api.explain(tiny_run.run_dir, files[:1], tmp_path / "cam2", Q, target_class="normal")
    assert res[0]["explained_class"] == "normal"
    with pytest.raises(ConfigError, match="not a class"):
        api.explain(tiny_run.run_dir, files, tmp_path / "cam3", Q, target_class="cataract")


def test_target_layer_found_without_feature_info():
    import timm

    from nfx.explain import find_target_layer

    m = timm.create_model("test_nfnet", num_classes=2).eval()
    assert find_target_layer(m)[0] == "final_conv"
    del m.feature_info
    name, mod = find_target_layer(m, 64)
    assert name in ("final_conv", "final_act")  # the last 4-D map before the head


def test_explain_command(tiny_run, tiny_data, tmp_path):
    f = next((tiny_data / "png" / "normal").glob("*.png"))
    r = subprocess.run([sys.executable, "-m", "nfx", "explain", str(tiny_run.run_dir), str(f), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "o").glob("*_gradcam.png"))) == 1


def test_warnings_of_choosing_thresholds_on_the_validation_split_reach_evaluation_json(tiny_data, tmp_path):
    """A validation image that no longer decodes, found while choosing thresholds for other data: the
    warning is in evaluation.json and the report (it used to go to a silenced printer), and it is shown."""
    import shutil

    from nfx.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    data = tmp_path / "data"
    shutil.copytree(tiny_data / "png", data)
    cfg = RunConfig(data=DataConfig(path=str(data), size=64, num_workers=0, cache_dir=str(tmp_path / "cache")),
                    model=ModelConfig(arch="test_nfnet", pretrained=False),
                    train=TrainConfig(epochs=1, freeze_epochs=0, bs=4, lr=1e-3, agc=0.16), out=str(tmp_path), name="r")
    res = api.finetune(cfg, Printer(quiet=True))
    valid = [r["path"] for r in runs.read_csv(res.run_dir / runs.SPLITS) if r["split"] == "valid"]
    with open(valid[0], "wb") as f:  # damaged after training
        f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    shown = Printer(quiet=True)
    ev = api.evaluate(res.run_dir, str(tiny_data / "png"), printer=shown, n_bootstrap=0, plots=False)
    want = [w for w in ev["warnings"] if w.startswith("validation split (thresholds): 1 file(s) could not be decoded")]
    assert want and want[0] in shown.warnings
    assert "validation split (thresholds)" in (res.run_dir / "report.md").read_text()
