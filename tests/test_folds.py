"""k-fold cross-validation (`nfx finetune --folds K`): the fold assignment, the parent folder, the
out-of-fold evaluation (checked against the fold runs' own predictions), the fold ensemble in torch
and ONNX, resuming a parent, and the refusals."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfx.data.split import grouped_stratified_folds

ARGS = ["--arch", "test_nfnet", "--no-pretrained", "--epochs", "2", "--bs", "4", "--size", "32", "--workers", "0"]


def cli(*args) -> tuple[int, str, str]:
    from nfx.cli import main

    out, err = io.StringIO(), io.StringIO()
    old, sys.argv = sys.argv, ["nfx", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 14), st.sampled_from("abc")), min_size=12, max_size=80),
       st.integers(2, 5), st.integers(0, 9))
def test_folds_are_disjoint_cover_everything_keep_groups_and_are_stratified(items, k, seed):
    groups = [f"g{g}" for g, _ in items]
    labels = [lbl for _, lbl in items]
    if len(set(groups)) < k:
        with pytest.raises(ValueError):
            grouped_stratified_folds(labels, groups, k, seed)
        return
    fold = grouped_stratified_folds(labels, groups, k, seed)
    assert len(fold) == len(items) and set(fold) <= set(range(1, k + 1))  # each item in exactly one fold
    for g in set(groups):
        assert len({fold[i] for i in range(len(items)) if groups[i] == g}) == 1  # a group never straddles
    # stratified: per label, the fold counts differ by at most one group's images of the label, plus
    # the images of the label carried by groups of another majority (placed by their own label)
    members = {g: [i for i in range(len(items)) if groups[i] == g] for g in set(groups)}
    majority = {g: Counter(labels[i] for i in m).most_common(1)[0][0] for g, m in members.items()}
    for lbl in set(labels):
        per = [sum(1 for i in range(len(items)) if labels[i] == lbl and fold[i] == f) for f in range(1, k + 1)]
        biggest = max(sum(labels[i] == lbl for i in m) for m in members.values())
        carried = sum(labels[i] == lbl for g, m in members.items() if majority[g] != lbl for i in m)
        assert max(per) - min(per) <= biggest + carried, (lbl, per)
    assert fold == grouped_stratified_folds(labels, groups, k, seed)  # seeded


@pytest.fixture(scope="module")
def parent(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("folds")
    code, _, err = cli("finetune", tiny_data / "dicom", *ARGS, "--folds", "3", "--out", out, "--name", "cv")
    assert code == 0, err[-2000:]
    return out / "cv"


def test_parent_holds_k_ordinary_runs_whose_validation_folds_partition_the_data(parent):
    from nfx import runs

    rows = runs.read_csv(parent / runs.FOLDS)
    assert {r["fold"] for r in rows} == {"1", "2", "3"} and all(r["split"] == "cv" for r in rows)
    cfg = json.loads((parent / runs.CONFIG).read_text())
    assert cfg["train"]["folds"] == 3
    valid_of = {}
    for f in (1, 2, 3):
        d = parent / f"fold-{f}"
        assert (d / runs.WEIGHTS).is_file() and (d / runs.METRICS).is_file()
        split = {r["path"]: r["split"] for r in runs.read_csv(d / runs.SPLITS)}
        assert {p for p, s in split.items() if s == "valid"} == {r["path"] for r in rows if r["fold"] == str(f)}
        assert json.loads((d / runs.CONFIG).read_text())["train"]["folds"] is None  # an ordinary run
        for p, s in split.items():
            if s == "valid":
                valid_of.setdefault(p, []).append(f)
    assert sorted(valid_of) == sorted(r["path"] for r in rows) and all(len(v) == 1 for v in valid_of.values())
    patients = {}
    for r in rows:
        patients.setdefault(r["patient"], set()).add(r["fold"])
    assert all(len(v) == 1 for v in patients.values())  # a patient's images share a fold
    m = json.loads((parent / runs.METRICS).read_text())
    assert len(m["per_fold"]) == 3 and m["valid_accuracy"] == pytest.approx(
        np.mean([f["valid_accuracy"] for f in m["per_fold"]]), abs=1e-6)


def test_out_of_fold_metrics_equal_those_computed_by_hand_from_the_fold_runs(parent):
    from sklearn.metrics import roc_auc_score

    from nfx import runs
    from nfx.console import Printer
    from nfx.workflows.loading import load_run, predict_probs

    code, out, err = cli("evaluate", parent, "--json", "--n-bootstrap", "50")
    assert code == 0, err[-2000:]
    ev = json.loads(out)
    rows = runs.read_csv(parent / runs.FOLDS)
    probs, y = [], []
    classes = None
    for f in (1, 2, 3):
        run = load_run(parent / f"fold-{f}")
        classes = list(run.info.classes)
        mine = [r for r in rows if r["fold"] == str(f)]
        p, bad = predict_probs(run.model, [r["path"] for r in mine], run.info, run.cfg.data.cache_dir, Printer(quiet=True))
        assert not bad
        probs.append(p)
        y += [classes.index(r["label"]) for r in mine]
    probs, y = np.concatenate(probs), np.array(y)
    assert ev["n_images"] == len(rows)
    assert ev["accuracy"] == pytest.approx(float((probs.argmax(1) == y).mean()), abs=1e-6)
    pos = classes.index("glaucoma")
    assert ev["roc_auc"] == pytest.approx(roc_auc_score(y == pos, probs[:, pos]), abs=1e-6)
    assert ev["roc_auc_ci"] is not None and ev["folds"]["k"] == 3
    youden = ev["operating_points"].get("Youden")
    if youden:  # each fold's threshold chosen on the other folds' scores, never its own
        assert len(youden["thresholds_per_fold"]) == 3 and "other folds" in youden["chosen_on"]
    assert "Per fold" in (parent / runs.REPORT).read_text()
    pred = runs.read_csv(parent / runs.PREDICTIONS)
    assert {r["fold"] for r in pred} == {"1", "2", "3"}


def test_fold_ensemble_exports_to_onnx_and_predicts_like_the_torch_ensemble(parent, tiny_data):
    import torch

    from nfx.workflows.loading import load_run

    code, _, err = cli("export", parent, "--onnx")
    assert code == 0, err[-2000:]
    assert "ensemble of 3 fold models" in (parent / "MODEL.md").read_text()
    files = sorted((tiny_data / "png").rglob("*.png"))[:3]
    got = {}
    for backend in ("onnx", "torch"):
        code, out, err = cli("predict", parent, *files, "--backend", backend, "--json")
        assert code == 0, err[-2000:]
        got[backend] = [json.loads(line)["probabilities"] for line in out.splitlines() if line.startswith("{")]
    for a, b in zip(got["onnx"], got["torch"], strict=True):
        for c in a:
            assert a[c] == pytest.approx(b[c], abs=1e-5)
    ens = load_run(parent)  # the mean of the fold models' softmax outputs
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        want = torch.stack([m(x).softmax(1) for m in ens.model.folds]).mean(0)
        assert torch.allclose(ens.model(x).softmax(1), want, atol=1e-6)


def test_resume_of_a_parent_restarts_a_lost_fold_and_equals_the_uninterrupted_run(parent, tmp_path):
    from safetensors.torch import load_file

    from nfx import runs

    copy = tmp_path / "cv"
    shutil.copytree(parent, copy)
    shutil.rmtree(copy / "fold-3")  # as if killed before fold 3 wrote its first checkpoint
    (copy / runs.METRICS).unlink()
    code, _, err = cli("finetune", "--resume", copy)
    assert code == 0, err[-2000:]
    assert "fold 1/3: done" in err and "fold 3/3: training" in err
    a, b = load_file(str(parent / "fold-3" / runs.WEIGHTS)), load_file(str(copy / "fold-3" / runs.WEIGHTS))
    for key in a:
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-5, atol=1e-6)
    code, _, err = cli("finetune", "--resume", copy)
    assert code == 1 and "already complete" in err


def test_folds_refusals(tiny_data, tmp_path, parent):
    data = tmp_path / "d"
    shutil.copytree(tiny_data / "png", data / "train")
    shutil.copytree(tiny_data / "png", data / "valid")
    code, _, err = cli("finetune", data, *ARGS, "--folds", "2", "--out", tmp_path / "runs")
    assert code == 1 and "user-given valid split" in err
    code, _, err = cli("finetune", tiny_data / "png", *ARGS, "--folds", "1", "--out", tmp_path / "runs")
    assert code == 1 and "--folds must be >= 2" in err
    code, _, err = cli("finetune", tiny_data / "png", *ARGS, "--folds", "30", "--out", tmp_path / "runs")
    assert code == 1 and "lower --folds" in err
    code, _, err = cli("explain", parent, next((tiny_data / "png").rglob("*.png")), "--out", tmp_path / "cam")
    assert code == 1 and "fold-1" in err
    lone = tmp_path / "lone"
    shutil.copytree(parent, lone)
    shutil.rmtree(lone / "fold-2")
    code, _, err = cli("evaluate", lone)
    assert code == 1 and "fold 2 has not finished" in err and len(err.strip().splitlines()) == 1
    assert Path(parent).is_dir()


def test_a_test_split_sharing_a_copy_with_the_cross_validated_images_is_refused(tiny_data, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(tiny_data / "png", data / "train")
    one = sorted((tiny_data / "dicom" / "glaucoma").glob("*.dcm"))[0]  # the same picture as a training PNG
    (data / "test" / "glaucoma").mkdir(parents=True)
    shutil.copy(one, data / "test" / "glaucoma" / one.name)
    code, _, err = cli("finetune", data, *ARGS, "--folds", "2", "--out", tmp_path / "runs")
    assert code == 1 and "sit in the test split and in the cross-validated images" in err, err[-1500:]
