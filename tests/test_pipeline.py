"""finetune → evaluate → export → predict on tiny synthetic data, through the real stack."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import pytest

from nfx import api, runs
from nfx.config import RunConfig
from nfx.console import Printer
from nfx.errors import ConfigError, RunError


def test_finetune_writes_a_complete_run_folder(tiny_run):
    d = tiny_run.run_dir
    for f in ("config.json", "env.json", "splits.csv", "model.safetensors", "history.csv",
              "metrics.json", "model.json"):
        assert (d / f).is_file(), f
    hist = list(csv.DictReader(open(d / "history.csv")))
    assert [h["phase"] for h in hist] == ["frozen", "unfrozen"]
    assert hist[0]["agc_clip_fraction"] == ""  # body frozen: nothing for AGC to clip
    assert 0.0 <= float(hist[1]["agc_clip_fraction"]) <= 1.0
    m = json.loads((d / "metrics.json").read_text())
    assert m["weights_source"] == "trained from scratch"
    assert m["effective_batch_size"] == 8 and m["agc"] == 0.16
    assert m["agc_calls"] == m["optimizer_steps"] > 0
    env = json.loads((d / "env.json").read_text())
    assert env["packages"]["torch"] and env["device"] == "cpu"
    assert any("HorizontalFlip" in t for t in env["augmentation"])  # the resolved light preset


def test_splits_are_patient_grouped(tiny_run):
    rows = list(csv.DictReader(open(tiny_run.run_dir / "splits.csv")))
    split_of = {}
    for r in rows:
        assert r["patient"], "DICOM PatientID must be read"
        split_of.setdefault(r["patient"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())
    assert {r["split"] for r in rows} == {"train", "valid"}


def test_config_round_trip_and_unknown_keys(tiny_run, tmp_path):
    cfg = RunConfig.load(tiny_run.run_dir / "config.json")
    assert cfg.model.arch == "test_nfnet" and cfg.train.accum == 2 and cfg.data.size == 64
    assert cfg.train.effective_batch_size == 8
    d = json.loads((tiny_run.run_dir / "config.json").read_text())
    d["train"]["acumm"] = 3
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="acumm"):
        RunConfig.load(bad)


def test_evaluate_writes_metrics_predictions_report(tiny_run):
    ev = api.evaluate(tiny_run.run_dir, printer=Printer(quiet=True), n_bootstrap=200)
    for k in ("accuracy", "balanced_accuracy", "roc_auc", "roc_auc_ci", "sensitivity", "sensitivity_ci",
              "specificity", "specificity_ci", "n_images", "n_patients", "confusion_matrix", "threshold"):
        assert k in ev, k
    assert ev["positive_class"] == "glaucoma"
    on_disk = json.loads((tiny_run.run_dir / "evaluation.json").read_text())
    assert on_disk == json.loads(json.dumps(ev))
    preds = list(csv.DictReader(open(tiny_run.run_dir / "predictions.csv")))
    assert len(preds) == ev["n_images"] == sum(map(sum, ev["confusion_matrix"]))
    for p in preds:
        assert abs(float(p["p_glaucoma"]) + float(p["p_normal"]) - 1) < 1e-5
    report = (tiny_run.run_dir / "report.md").read_text()
    assert "trained from scratch" in report and "ROC AUC" in report


def test_evaluate_on_another_folder(tiny_run, tiny_data):
    ev = api.evaluate(tiny_run.run_dir, str(tiny_data / "png"), Printer(quiet=True), n_bootstrap=100)
    # the PNGs are the same pictures as the run's DICOMs: its 20 training images are left out as copies
    assert len(ev["copies_of_training"]) == 20
    assert ev["n_images"] == 4
    assert ev["n_patients"] == 4  # PNG files carry no patient id: each file counts alone


def test_export_onnx_matches_torch_and_predicts(tiny_run, tiny_data):
    r = api.export(tiny_run.run_dir, Printer(quiet=True))
    assert r["max_abs_diff"] <= 1e-4
    m = onnx.load(r["onnx"])
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["nfx_classes"]) == ["glaucoma", "normal"]
    assert meta["nfx_input_size"] == "64"
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value  # dynamic batch axis
    # ONNX Runtime prediction == torch prediction on real files
    files = sorted(str(p) for p in (tiny_data / "png" / "glaucoma").glob("*.png"))[:3]
    onnx_res = api.predict(tiny_run.run_dir, files, Printer(quiet=True))
    assert {r["engine"] for r in onnx_res} == {"onnxruntime"}
    run = api.load_run(tiny_run.run_dir)
    probs, bad = api.predict_probs(run.model, files, run.info, None, Printer(quiet=True))
    assert not bad
    got = np.array([[r["probabilities"][c] for c in run.info.classes] for r in onnx_res])
    np.testing.assert_allclose(got, probs, atol=1e-4)


def test_missing_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="run folder not found"):
        api.evaluate(tmp_path / "nope", printer=Printer(quiet=True))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / runs.CONFIG).write_text("{}")
    with pytest.raises(RunError, match="model.safetensors"):
        api.export(tmp_path / "half", Printer(quiet=True))


def test_evaluate_reports_files_it_cannot_use(tiny_run, tiny_data, tmp_path):
    import shutil

    data = tmp_path / "eval"
    shutil.copytree(tiny_data / "png", data)
    (data / "normal" / "notes.txt").write_text("not an image")
    (data / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    ev = api.evaluate(tiny_run.run_dir, str(data), Printer(quiet=True), n_bootstrap=50)
    assert ev["n_images"] == 4 and len(ev["copies_of_training"]) == 20  # the training pictures are left out
    text = " ".join(ev["warnings"])
    assert "notes.txt" in text and "broken.png" in text


def test_a_second_run_with_the_same_name_is_refused(tiny_run, tiny_data):
    cfg = RunConfig.load(tiny_run.run_dir / "config.json")
    before = {p.name: p.stat().st_mtime_ns for p in tiny_run.run_dir.iterdir() if p.is_file()}
    with pytest.raises(RunError, match=r"exists already; pass another --name.*--resume"):
        api.finetune(cfg, Printer(quiet=True))
    assert before == {p.name: p.stat().st_mtime_ns for p in tiny_run.run_dir.iterdir() if p.is_file()}


def test_predict_where_every_image_is_bad_is_an_error(tiny_run, tmp_path):
    from nfx.errors import DataError

    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"none of the 1 image\(s\) could be read .*x\.png"):
        api.predict(tiny_run.run_dir, [str(bad)], Printer(quiet=True))
