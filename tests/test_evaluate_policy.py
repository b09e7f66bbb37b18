"""The pure pieces of `nfx evaluate`: threshold policy, the warnings a report must carry, and
provenance — tested without a model or a run folder."""

from __future__ import annotations

import numpy as np
import pytest

from nfx.config import RunConfig, TrainConfig
from nfx.errors import DataError
from nfx.evaluate.cautions import evaluation_warnings, provenance
from nfx.evaluate.thresholds import choose_operating_points
from nfx.records import InputSpec, ModelInfo

VY = np.array([0, 0, 0, 1, 1, 1])
VP = np.array([0.1, 0.2, 0.6, 0.4, 0.8, 0.9])


def test_default_policy_is_half_with_youden_from_validation():
    c = choose_operating_points(VY, VP, None, None, in_sample=False)
    assert c.headline == 0.5 and c.source == "default"
    assert c.points["Youden"][1] == "valid split" and "default 0.5" in c.points and not c.warnings


def test_target_sensitivity_picks_the_highest_threshold_reaching_it():
    c = choose_operating_points(VY, VP, None, 1.0, in_sample=False)
    assert c.headline == pytest.approx(0.4)  # the lowest positive score: all 3 positives caught
    assert "sensitivity 1" in c.source


def test_user_threshold_and_in_sample_warning():
    c = choose_operating_points(VY, VP, 0.7, None, in_sample=True)
    assert c.headline == 0.7 and c.points["user"] == (0.7, "given (--threshold)")
    assert any("in-sample" in w for w in c.warnings)


def test_one_class_validation_split():
    c = choose_operating_points(np.zeros(4, int), np.linspace(0, 1, 4), None, None, in_sample=False)
    assert "Youden" not in c.points and any("Youden threshold not available" in w for w in c.warnings)
    with pytest.raises(DataError, match="--target-sensitivity"):
        choose_operating_points(None, None, None, 0.9, in_sample=False)


def _rows():
    return [{"path": "/d/a.png", "patient": "P1", "split": "train"},
            {"path": "/d/b.png", "patient": "P1", "split": "valid"},  # leaked
            {"path": "/d/c.png", "patient": "P2", "split": "valid"}]


def test_warnings_name_what_a_reader_must_know():
    result = {"n_patients": 2, "positive_class": "glaucoma", "roc_auc_ci": [0.2, 0.9]}
    items = [("/d/a.png", "x", None), ("/d/c.png", "y", None)]
    ws = evaluation_warnings(result, items, _rows(), "/other", [0.1, 0.9], 0.16, True)
    text = " | ".join(ws)
    for needle in ("only 2 patients", "0.70 wide", "no patient ids", "appear in more than one split",
                   "0 patient(s) and 1 file(s) of /other were used for training", "heavy AGC clipping",
                   "trained from scratch"):
        assert needle in text, needle
    calm = evaluation_warnings({"n_patients": 100, "positive_class": "g", "roc_auc_ci": [0.8, 0.9]},
                               [("/x.png", "y", "P9")], [], None, [0.1], 0.16, False)
    assert calm == []


def test_provenance_records_schedule_resize_and_versions():
    cfg = RunConfig(train=TrainConfig(schedule="from-scratch", freeze_epochs=0, lr=2e-3, body_lr_div=1.0, agc=0.16))
    info = ModelInfo("test_nfnet", ("a", "b"), InputSpec(64, (0.5,) * 3, (0.5,) * 3, "squish"), "trained from scratch")
    p = provenance(cfg, info, {"precision": "fp32", "device": "cpu", "nfx": "0.1.0"}, _rows())
    assert p["model"]["resize"] == "squish" and p["model"]["arch"] == "test_nfnet"
    assert p["training"].startswith("from-scratch schedule: 0 head-only + 10 full epochs")
    assert "lr 0.002 (body lr/1)" in p["training"] and "AGC 0.16" in p["training"]
    assert p["splits"]["train"] == {"images": 1, "patients": 1} and p["trained_with_nfx"] == "0.1.0"


def test_evaluate_options_are_checked_before_the_run_is_read(tmp_path):
    from nfx import api
    from nfx.config import EvaluateConfig
    from nfx.console import Printer
    from nfx.errors import ConfigError

    missing = tmp_path / "no-run"  # would be a RunError if the options were checked after loading
    for kw, msg in ((dict(threshold=0.5, target_sensitivity=0.9), "not both"), (dict(threshold=1.5), r"\[0, 1\]"),
                    (dict(target_sensitivity=0.0), r"\(0, 1\]"), (dict(split="holdout"), "--split"),
                    (dict(n_bootstrap=-1), "--n-bootstrap")):
        with pytest.raises(ConfigError, match=msg):
            EvaluateConfig(**kw).validate()
        with pytest.raises(ConfigError, match=msg):
            api.evaluate(missing, None, Printer(quiet=True), **kw)


def test_selection_warning_only_for_weights_chosen_on_validation():
    from nfx.evaluate.cautions import selection_warning

    last = {"kept": "last", "selected_epoch": 8, "epochs_run": 8, "monitor": "valid_roc_auc"}
    best = {"kept": "best", "selected_epoch": 1, "epochs_run": 8, "monitor": "valid_roc_auc"}
    assert selection_warning([last]) is None
    assert selection_warning([{**best, "selected_epoch": 8}]) is None  # the best was the last epoch
    w = selection_warning([best])
    assert "epoch 1 of 8" in w and "valid_roc_auc" in w and "optimistic" in w
    w = selection_warning([last, best, best])
    assert "2 of 3 fold models" in w
    # runs written before --keep existed kept the best epoch: warned too
    assert selection_warning([{k: v for k, v in best.items() if k != "kept"}]) is not None


def test_fold_table_and_model_card_follow_the_per_fold_record(capsys):
    """`nfx finetune --folds` labels a fold "best on validation" by the rule of evaluate's warning (an
    epoch other than the last), and MODEL.md of a --lr-find parent lists each fold model's found lr."""
    from types import SimpleNamespace

    from nfx.console import Printer, show_folds
    from nfx.export.card import _lr_card

    per_fold = [{"selected_epoch": 3, "epochs_run": 3, "kept": "best", "valid_accuracy": 0.8, "lr_found": 1.2e-3},
                {"selected_epoch": 1, "epochs_run": 3, "kept": "best", "valid_accuracy": 0.7, "lr_found": 8e-4},
                {"selected_epoch": 3, "epochs_run": 3, "kept": "last", "valid_accuracy": 0.9, "lr_found": 2e-3}]
    show_folds(Printer(), SimpleNamespace(run_dir="cv", metrics={"per_fold": per_fold, "folds": 3}))
    err = capsys.readouterr().err
    assert "fold 1 (epoch 3):" in err and "fold 2 (epoch 1, best on validation):" in err and "fold 3 (epoch 3):" in err
    assert _lr_card({"lr_find": True, "lr": 2e-3}, {"per_fold": per_fold}) == (
        "lr found by an lr range test for each fold model (`--lr-find`): 0.0012, 0.0008, 0.002")
    assert _lr_card({"lr_find": False, "lr": 2e-3}, {"per_fold": per_fold}) == "lr 0.002"
