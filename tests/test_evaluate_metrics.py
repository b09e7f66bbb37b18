"""The metrics added for clinical reports agree with scikit-learn on fixed arrays: operating
points (F1, MCC), Youden and target-sensitivity thresholds, PR AUC, calibration (ECE, Brier,
reliability bins), per-class tables, per-patient aggregation, and the one-pass bootstrap.
(tests/test_metrics.py covers the headline metrics and `patient_bootstrap` itself.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

from nfx.evaluate.bootstrap import patient_bootstrap, patient_bootstrap_many
from nfx.evaluate.metrics import (
    aggregate_by_patient,
    binary_at_threshold,
    bootstrap_intervals,
    calibration,
    evaluate_predictions,
    operating_point,
    per_class_metrics,
    pr_auc,
    roc_auc,
    threshold_for_sensitivity,
    youden_threshold,
)

Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.4, 0.55, 0.1, 0.2, 0.6, 0.3, 0.05, 0.5])


def _study(n_patients: int, seed: int, k: int = 2):
    rng = np.random.default_rng(seed)
    dx = rng.integers(0, k, n_patients)
    patients, y, logits = [], [], []
    for i in range(n_patients):
        for _ in range(2):
            patients.append(f"P{i}")
            y.append(dx[i])
            z = rng.normal(size=k)
            z[dx[i]] += 1.5
            logits.append(z)
    e = np.exp(np.array(logits))
    return patients, np.array(y), e / e.sum(1, keepdims=True)


def test_operating_point_matches_sklearn():
    for t in (0.05, 0.35, 0.5, 0.7, 0.95):
        pred = (P >= t).astype(int)
        o = operating_point(Y, P, t)
        assert o["f1"] == pytest.approx(f1_score(Y, pred, zero_division=0))
        assert o["mcc"] == pytest.approx(matthews_corrcoef(Y, pred))
        assert o["accuracy"] == pytest.approx(accuracy_score(Y, pred))
        assert o["sensitivity"] == binary_at_threshold(Y, P, t)["sensitivity"]
    # by hand at 0.5: tp 3 (0.9, 0.8, 0.55), fn 1, fp 2 (0.6, 0.5), tn 4
    o = operating_point(Y, P, 0.5)
    assert (o["tp"], o["fn"], o["fp"], o["tn"]) == (3, 1, 2, 4)
    assert o["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    assert json.loads(json.dumps(o)) == o  # no NaN: evaluation.json must round-trip


def _brute_youden(y, p):
    best = max(np.unique(p), key=lambda t: ((p >= t) & (y == 1)).sum() / (y == 1).sum()
               + ((p < t) & (y == 0)).sum() / (y == 0).sum())
    at = binary_at_threshold(y, p, best)
    return at["sensitivity"] + at["specificity"] - 1


@pytest.mark.parametrize("seed", range(5))
def test_youden_threshold_maximises_j(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    p = np.clip(0.25 * y + 0.75 * rng.random(60), 0, 1)
    t = youden_threshold(y, p)
    at = binary_at_threshold(y, p, t)
    assert at["sensitivity"] + at["specificity"] - 1 == pytest.approx(_brute_youden(y, p))
    assert t in set(p.tolist())  # an observed score, never sklearn's +inf sentinel


def test_youden_fixed_example_and_one_class():
    # J at 0.55: sens 3/4, spec 5/6 -> 0.583; at 0.4: sens 1, spec 4/6 -> 0.667 (the maximum)
    assert youden_threshold(Y, P) == pytest.approx(0.4)
    assert youden_threshold(np.zeros(5, int), np.linspace(0, 1, 5)) is None


@pytest.mark.parametrize("target", [0.5, 0.75, 0.8, 1.0])
def test_threshold_for_sensitivity_is_the_most_specific_reaching_target(target):
    t = threshold_for_sensitivity(Y, P, target)
    assert binary_at_threshold(Y, P, t)["sensitivity"] >= target
    higher = P[P > t]
    if len(higher):  # the next higher observed score misses the target
        assert binary_at_threshold(Y, P, higher.min())["sensitivity"] < target
    with pytest.raises(ValueError):
        threshold_for_sensitivity(Y, P, 0.0)


def test_pr_auc_matches_sklearn():
    probs = np.stack([1 - P, P], 1)
    assert pr_auc(Y, probs, 1) == pytest.approx(average_precision_score(Y, P))
    patients, y, pm = _study(40, 1, k=3)
    assert pr_auc(y, pm, None) == pytest.approx(average_precision_score(np.eye(3)[y], pm, average="macro"))
    assert pr_auc(np.zeros(4, int), np.full((4, 2), 0.5), 1) is None


def test_calibration_binary_matches_sklearn():
    rng = np.random.default_rng(3)
    p = rng.random(300)
    y = (rng.random(300) < p ** 1.5).astype(int)  # over-confident model
    probs = np.stack([1 - p, p], 1)
    c = calibration(y, probs, 1, n_bins=10)
    assert c["brier"] == pytest.approx(brier_score_loss(y, p))
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    filled = [b for b in c["bins"] if b["n"]]
    np.testing.assert_allclose([b["observed"] for b in filled], prob_true)
    np.testing.assert_allclose([b["mean_predicted"] for b in filled], prob_pred)
    assert sum(b["n"] for b in c["bins"]) == 300
    ece = sum(b["n"] / 300 * abs(b["mean_predicted"] - b["observed"]) for b in filled)
    assert c["ece"] == pytest.approx(ece) and c["ece"] > 0.05


def test_ece_small_when_calibrated_and_hand_example():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert calibration(y, np.stack([1 - p, p], 1), 1)["ece"] < 0.02
    # two bins by hand: [0.1, 0.1] with one positive, [0.9, 0.9] with both positive
    y = np.array([0, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.9, 0.9])
    c = calibration(y, np.stack([1 - p, p], 1), 1)
    assert c["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)


def test_calibration_multiclass_top_label():
    patients, y, pm = _study(50, 2, k=3)
    c = calibration(y, pm, None)
    conf, hit = pm.max(1), (pm.argmax(1) == y)
    filled = [b for b in c["bins"] if b["n"]]
    assert sum(b["n"] for b in filled) == len(y)
    assert c["ece"] == pytest.approx(sum(b["n"] / len(y) * abs(b["mean_predicted"] - b["observed"]) for b in filled))
    assert c["brier"] == pytest.approx(np.mean(np.sum((pm - np.eye(3)[y]) ** 2, 1)))
    assert 0 < c["ece"] < 1 and conf.mean() > 0 and hit.mean() > 0


def test_per_class_matches_sklearn():
    patients, y, pm = _study(60, 4, k=3)
    pred = pm.argmax(1)
    pc = per_class_metrics(y, pred, pm, ["a", "b", "c"])
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=[0, 1, 2])
    for k, c in enumerate("abc"):
        assert pc[c]["precision"] == pytest.approx(prec[k])
        assert pc[c]["recall"] == pytest.approx(rec[k])
        assert pc[c]["f1"] == pytest.approx(f1[k])
        assert pc[c]["support"] == sup[k]
        assert pc[c]["roc_auc"] == pytest.approx(roc_auc_score(y == k, pm[:, k]))
        neg = y != k
        assert pc[c]["specificity"] == pytest.approx(((pred != k) & neg).sum() / neg.sum())


def test_aggregate_by_patient():
    y = np.array([0, 1, 0, 0, 1])
    probs = np.array([[0.8, 0.2], [0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.3, 0.7]])
    py, pp, ids = aggregate_by_patient(y, probs, ["A", "A", "B", "B", "C"], pos=1)
    assert ids == ["A", "B", "C"]
    assert py.tolist() == [1, 0, 1]  # A has one diseased eye: the patient is positive
    np.testing.assert_allclose(pp, [[0.5, 0.5], [0.75, 0.25], [0.3, 0.7]])
    with pytest.raises(ValueError, match="different labels"):
        aggregate_by_patient(np.array([0, 2]), np.full((2, 3), 1 / 3), ["A", "A"])


def test_bootstrap_many_shares_draws_with_patient_bootstrap():
    patients, y, pm = _study(40, 5)

    def auc(ix):
        return roc_auc(y[ix], pm[ix], 1)

    one = patient_bootstrap(auc, patients, n_resamples=300, seed=7)
    many = patient_bootstrap_many(lambda ix: {"auc": auc(ix), "never": None}, patients, 300, seed=7)
    assert many["auc"] == pytest.approx(one)
    assert "never" not in many
    # arrays give a pointwise band
    band = patient_bootstrap_many(lambda ix: {"v": np.array([0.0, y[ix].mean()])}, patients, 200, seed=0)["v"]
    assert band[0][0] == band[1][0] == 0.0 and band[0][1] < y.mean() < band[1][1]


def test_bootstrap_intervals_contain_estimate_and_narrow_with_patients():
    widths = []
    for n in (30, 480):
        patients, y, pm = _study(n, n)
        out = bootstrap_intervals(y, pm, ["normal", "glaucoma"], 0.5, patients, n_resamples=300, seed=0)
        point = roc_auc(y, pm, 1)
        lo, hi = out["roc_auc_ci"]
        assert lo <= point <= hi
        at = binary_at_threshold(y, pm[:, 1], 0.5)
        assert out["sensitivity_ci"][0] <= at["sensitivity"] <= out["sensitivity_ci"][1]
        assert out["specificity_ci"][0] <= at["specificity"] <= out["specificity_ci"][1]
        band = out["roc_band"]
        assert all(a <= b for a, b in zip(band["tpr_lo"], band["tpr_hi"]))
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2.5  # 16× the patients: about 4× narrower


def test_evaluate_predictions_is_json_ready():
    patients, y, pm = _study(25, 8)
    res, pred, curves = evaluate_predictions(y, pm, ["glaucoma", "normal"], patients, 0.5,
                                             {"default 0.5": (0.5, "fixed")}, n_bootstrap=100)
    json.dumps(res, allow_nan=False)  # no NaN, no numpy scalars: evaluation.json round-trips
    for k in ("accuracy", "balanced_accuracy", "roc_auc", "roc_auc_ci", "pr_auc", "sensitivity", "sensitivity_ci",
              "specificity", "specificity_ci", "ppv", "npv", "f1", "mcc", "ece", "brier", "n_images",
              "n_patients", "confusion_matrix", "threshold", "per_class", "operating_points", "calibration"):
        assert k in res, k
    assert res["n_patients"] == 25 and res["n_images"] == 50
    assert curves["roc"] and curves["pr"] and curves["roc_band"]
    # more classes: macro AUC interval, no binary sensitivity
    patients, y, pm = _study(30, 9, k=3)
    res, pred, _ = evaluate_predictions(y, pm, ["a", "b", "c"], patients, 0.5, None, n_bootstrap=100)
    assert res["sensitivity"] is None and res["roc_auc_ci"] is not None
    assert res["f1"] == pytest.approx(f1_score(y, pm.argmax(1), average="macro"))
    assert res["mcc"] == pytest.approx(matthews_corrcoef(y, pm.argmax(1)))
