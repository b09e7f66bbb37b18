"""`nfx predict` as a product: run folder or bare .onnx, both backends agreeing with evaluate,
folders walked like ingest with bad files reported, --out CSV, the ONNX path without fastai/timm."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nfx import api, runs
from nfx.console import Printer
from nfx.errors import DataError, RunError


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny run, exported, plus its model.onnx copied alone into another folder."""
    api.export(tiny_run.run_dir, Printer(quiet=True))
    bare = tmp_path_factory.mktemp("bare") / "glaucoma-model.onnx"
    shutil.copy(tiny_run.run_dir / runs.ONNX, bare)
    return tiny_run.run_dir, bare


def _probs(rows, classes):
    return np.array([[r["probabilities"][c] for c in classes] for r in rows])


def test_both_backends_give_evaluates_probabilities(exported):
    run_dir, bare = exported
    api.evaluate(run_dir, printer=Printer(quiet=True), n_bootstrap=20, plots=False)
    ref = runs.read_csv(run_dir / runs.PREDICTIONS)
    files = [r["file"] for r in ref]
    classes = api.ModelInfo.read(run_dir).classes
    want = np.array([[float(r[f"p_{c}"]) for c in classes] for r in ref])
    torch_rows = api.predict(run_dir, files, Printer(quiet=True), backend="torch")
    onnx_rows = api.predict(run_dir, files, Printer(quiet=True), backend="onnx")
    bare_rows = api.predict(bare, files, Printer(quiet=True))
    assert [r["file"] for r in torch_rows] == files
    assert {r["engine"] for r in torch_rows} == {"torch"}
    assert {r["engine"] for r in onnx_rows} == {r["engine"] for r in bare_rows} == {"onnxruntime"}
    np.testing.assert_allclose(_probs(torch_rows, classes), want, atol=2e-6)
    np.testing.assert_allclose(_probs(onnx_rows, classes), want, atol=1e-4)
    np.testing.assert_allclose(_probs(bare_rows, classes), _probs(onnx_rows, classes), atol=1e-7)
    # and the predictions really depend on the image: not one constant row
    assert np.ptp(want[:, 0]) > 1e-4


def test_folders_are_walked_bad_files_reported_and_out_csv_written(exported, tiny_data, tmp_path):
    run_dir, bare = exported
    data = tmp_path / "new"
    shutil.copytree(tiny_data / "png" / "normal", data / "a")
    (data / "a" / "notes.txt").write_text("not an image")
    (data / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (data / "a" / ".DS_Store").write_bytes(b"\0\0")
    (data / "a" / "._x.png").write_bytes(b"\0\0")  # macOS resource fork: hidden, not an image
    n_good = len(list((tiny_data / "png" / "normal").glob("*.png")))
    out = tmp_path / "preds.csv"
    rows = api.predict(bare, [str(data)], Printer(quiet=True), out=out)
    errors = {os.path.basename(r["file"]): r["error"] for r in rows if "error" in r}
    assert set(errors) == {"notes.txt", "broken.png"}
    assert "unsupported file type" in errors["notes.txt"]
    assert len(rows) == n_good + 2
    on_disk = list(csv.DictReader(open(out)))
    assert [r["file"] for r in on_disk] == [r["file"] for r in rows]
    assert list(on_disk[0]) == ["file", "prediction", "probability", "p_glaucoma", "p_normal", "engine", "error"]
    good = [r for r in on_disk if not r["error"]]
    assert len(good) == n_good
    for r in good:
        assert abs(float(r["p_glaucoma"]) + float(r["p_normal"]) - 1) < 1e-5
        assert r["prediction"] in ("glaucoma", "normal") and r["engine"] == "onnxruntime"
    assert not list(tmp_path.glob(".preds.csv*"))  # the atomic writer left no temp file


def test_backend_choices_are_checked(exported, tiny_run, tiny_data, tmp_path):
    run_dir, bare = exported
    files = [str(next((tiny_data / "png" / "normal").glob("*.png")))]
    with pytest.raises(RunError, match="bare .onnx file has no torch weights"):
        api.predict(bare, files, Printer(quiet=True), backend="torch")
    with pytest.raises(DataError, match="unknown --backend 'tensorrt'"):
        api.predict(run_dir, files, Printer(quiet=True), backend="tensorrt")
    unexported = tmp_path / "run"
    shutil.copytree(run_dir, unexported)
    (unexported / runs.ONNX).unlink()
    with pytest.raises(RunError, match=r"not exported yet; run `nfx export .* --onnx`"):
        api.predict(unexported, files, Printer(quiet=True), backend="onnx")
    assert {r["engine"] for r in api.predict(unexported, files, Printer(quiet=True))} == {"torch"}
    notmodel = tmp_path / "weights.bin"
    notmodel.write_bytes(b"x")
    with pytest.raises(RunError, match="not a run folder or an .onnx file"):
        api.predict(notmodel, files, Printer(quiet=True))


def test_onnx_path_imports_neither_fastai_nor_timm(exported, tiny_data, tmp_path):
    _, bare = exported
    out = tmp_path / "p.csv"
    code = (
        "import sys\n"
        "from nfx import api\n"
        "from nfx.console import Printer\n"
        f"rows = api.predict({str(bare)!r}, [{str(tiny_data / 'dicom')!r}], Printer(quiet=True), out={str(out)!r})\n"
        "assert rows and all('engine' in r for r in rows), rows[:2]\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastai', 'timm', 'torchvision'}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert out.is_file()


def test_cli_predict_with_out_and_errors(exported, tiny_data, tmp_path):
    from test_cli import _assert_one_line_error, nfx

    run_dir, bare = exported
    out = tmp_path / "o.csv"
    r = nfx("predict", bare, tiny_data / "png" / "glaucoma", "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and len(list(csv.DictReader(open(out)))) == len(list((tiny_data / "png" / "glaucoma").glob("*")))
    assert "predict" in r.stderr + r.stdout
    _assert_one_line_error(nfx("predict", bare, tiny_data / "png", "--backend", "torch"), "no torch weights")
    _assert_one_line_error(nfx("predict", tmp_path / "missing", tiny_data / "png"), "missing")


def test_export_writes_a_model_card_from_the_runs_files(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    for f in (runs.EVALUATION, runs.MODEL_CARD):
        (run / f).unlink(missing_ok=True)
    r = api.export(run, Printer(quiet=True))
    card = (run / runs.MODEL_CARD).read_text()
    assert r["model_card"] == str(run / runs.MODEL_CARD)
    assert "Not evaluated yet" in card and "nfx evaluate" in card
    ev = api.evaluate(run, printer=Printer(quiet=True), n_bootstrap=50, plots=False)
    api.export(run, Printer(quiet=True))
    card = (run / runs.MODEL_CARD).read_text()
    for section in ("## Model", "## Data provenance", "## Metrics", "## Intended use", "## Limits"):
        assert section in card, section
    assert "Not evaluated yet" not in card
    assert f"| ROC AUC | {ev['roc_auc']:.3f}" in card
    lo, hi = ev["sensitivity_ci"] if ev.get("sensitivity_ci") else (None, None)
    if lo is not None:
        assert f"{lo:.3f}–{hi:.3f}" in card
    assert f"≥ {ev['threshold']:.3f}" in card and ev["threshold_source"] in card
    assert "test_nfnet" in card and "trained from scratch" in card and "Not a medical device" in card
    # patient ids never appear on the card, only counts
    pids = {row["patient"] for row in runs.read_csv(run / runs.SPLITS) if row["patient"]}
    assert pids and not [p for p in pids if p in card]


def test_onnx_predictor_never_uses_a_remote_provider(exported):
    from nfx.export.onnx import OnnxPredictor, local_providers

    assert "AzureExecutionProvider" not in local_providers()
    used = OnnxPredictor(exported[1]).sess.get_providers()
    assert used and "AzureExecutionProvider" not in used
