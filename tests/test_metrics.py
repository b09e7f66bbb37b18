"""Metrics agree with scikit-learn; the patient bootstrap resamples patients, not images."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)

from nfx.evaluate.bootstrap import patient_bootstrap
from nfx.evaluate.metrics import (
    binary_at_threshold,
    classification_metrics,
    positive_index,
    roc_auc,
)


def _binary_probs(rng: np.random.Generator, n: int) -> np.ndarray:
    p = rng.random(n)
    return np.stack([1 - p, p], 1)


def _assert_binary_matches_sklearn(y, probs, classes, threshold):
    out, pred = classification_metrics(y, probs, classes, threshold)
    pos = positive_index(classes)
    neg = 1 - pos
    expected_pred = np.where(probs[:, pos] >= threshold, pos, neg)
    np.testing.assert_array_equal(pred, expected_pred)
    assert out["n_images"] == len(y)
    assert out["positive_class"] == classes[pos]
    assert out["threshold"] == threshold
    assert out["classes"] == list(classes)
    assert out["accuracy"] == pytest.approx(accuracy_score(y, expected_pred))
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, expected_pred))
    assert out["roc_auc"] == pytest.approx(roc_auc_score(y == pos, probs[:, pos]))
    assert out["confusion_matrix"] == confusion_matrix(y, expected_pred, labels=[0, 1]).tolist()
    kw = {"zero_division": np.nan}
    assert out["sensitivity"] == pytest.approx(recall_score(y, expected_pred, pos_label=pos, **kw))
    assert out["specificity"] == pytest.approx(recall_score(y, expected_pred, pos_label=neg, **kw))
    assert out["ppv"] == pytest.approx(precision_score(y, expected_pred, pos_label=pos, **kw))
    assert out["npv"] == pytest.approx(precision_score(y, expected_pred, pos_label=neg, **kw))
    return out


# ---------------------------------------------------------------------------------------------
# agreement with scikit-learn
# ---------------------------------------------------------------------------------------------
def test_binary_fixed_example_matches_sklearn_and_hand_counts():
    classes = ["glaucoma", "normal"]  # sorted order: the positive class (glaucoma) is index 0
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p_glaucoma = np.array([0.9, 0.8, 0.4, 0.55, 0.1, 0.2, 0.6, 0.3, 0.05, 0.5])
    probs = np.stack([p_glaucoma, 1 - p_glaucoma], 1)
    out = _assert_binary_matches_sklearn(y, probs, classes, 0.5)
    # by hand: predicted glaucoma = p >= 0.5 -> indices 0, 1, 3, 6, 9
    # glaucoma (y=0): 0,1,3 caught, 2 missed -> tp=3 fn=1; normal: 6, 9 flagged -> fp=2 tn=4
    assert out["sensitivity"] == pytest.approx(3 / 4)
    assert out["specificity"] == pytest.approx(4 / 6)
    assert out["ppv"] == pytest.approx(3 / 5)
    assert out["npv"] == pytest.approx(4 / 5)
    assert out["accuracy"] == pytest.approx(7 / 10)
    # rows = truth (glaucoma, normal), columns = prediction
    assert out["confusion_matrix"] == [[3, 1], [2, 4]]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("classes", [["glaucoma", "normal"], ["normal", "glaucoma"], ["cat", "dog"]])
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
def test_binary_random_matches_sklearn(seed, classes, threshold):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 200))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]  # both classes present
    probs = _binary_probs(rng, n)
    # make the scores informative, like a real model, and add exact ties at the threshold
    pos = positive_index(classes)
    probs[:, pos] = np.clip(0.6 * probs[:, pos] + 0.4 * (y == pos), 0, 1)
    probs[:5, pos] = threshold
    probs[:, 1 - pos] = 1 - probs[:, pos]
    _assert_binary_matches_sklearn(y, probs, classes, threshold)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [3, 5])
def test_multiclass_random_matches_sklearn(seed, k):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(30, 300))
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)  # every class present
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    classes = [f"class{i}" for i in range(k)]
    out, pred = classification_metrics(y, probs, classes)
    np.testing.assert_array_equal(pred, probs.argmax(1))
    assert out["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert out["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert out["confusion_matrix"] == confusion_matrix(y, pred, labels=list(range(k))).tolist()
    assert out["positive_class"] is None
    assert out["sensitivity"] is None and out["specificity"] is None


def test_multiclass_float32_softmax_is_accepted():
    # the model's softmax comes out as float32; the sum-to-one check of scikit-learn must pass
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(500, 4)).astype(np.float32) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    y = rng.integers(0, 4, 500)
    out, _ = classification_metrics(y, probs, ["a", "b", "c", "d"])
    expected = roc_auc_score(y, probs.astype(np.float64), multi_class="ovr", average="macro")
    assert out["roc_auc"] == pytest.approx(expected)


def test_binary_at_threshold_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.5 * rng.random(300) + 0.4 * y, 0, 1)
    for t in (0.1, 0.35, 0.5, 0.77):
        at = binary_at_threshold(y, p, t)
        pred = (p >= t).astype(int)
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert (at["tp"], at["tn"], at["fp"], at["fn"]) == (tp, tn, fp, fn)
        assert at["sensitivity"] == pytest.approx(recall_score(y, pred))
        assert at["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
        assert at["ppv"] == pytest.approx(precision_score(y, pred))
        assert at["npv"] == pytest.approx(precision_score(y, pred, pos_label=0))
        assert at["threshold"] == t


# ---------------------------------------------------------------------------------------------
# which class is positive
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "classes, expected",
    [
        (["glaucoma", "normal"], 0),
        (["normal", "glaucoma"], 1),
        (["Normal", "Glaucoma"], 1),
        (["malignant", "benign"], 0),
        (["healthy", "pneumonia"], 1),
        (["no_dr", "dr"], 1),
        (["dr", "no-dr"], 0),
        (["cat", "dog"], 1),  # two neutral names: the second
        (["dog", "cat"], 1),
        (["normal", "healthy"], 1),  # two normal-like names: the second
    ],
)
def test_positive_index(classes, expected):
    assert positive_index(classes) == expected


@pytest.mark.parametrize("classes", [["a"], ["a", "b", "c"]])
def test_positive_index_needs_two_classes(classes):
    with pytest.raises(ValueError):
        positive_index(classes)


def test_glaucoma_is_positive_whatever_the_order():
    rng = np.random.default_rng(11)
    n = 120
    is_glaucoma = rng.integers(0, 2, n)
    p_glaucoma = np.clip(0.6 * rng.random(n) + 0.3 * is_glaucoma, 0, 1)
    results = []
    for classes in (["glaucoma", "normal"], ["normal", "glaucoma"]):
        # encode the same data in this class order
        gi = classes.index("glaucoma")
        y = np.where(is_glaucoma == 1, gi, 1 - gi)
        probs = np.zeros((n, 2))
        probs[:, gi] = p_glaucoma
        probs[:, 1 - gi] = 1 - p_glaucoma
        out, pred = classification_metrics(y, probs, classes, threshold=0.4)
        assert out["positive_class"] == "glaucoma"
        assert out["sensitivity"] == pytest.approx(recall_score(is_glaucoma, p_glaucoma >= 0.4))
        results.append(out)
        np.testing.assert_array_equal(pred == gi, p_glaucoma >= 0.4)
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity", "ppv", "npv"):
        assert results[0][key] == pytest.approx(results[1][key]), key


# ---------------------------------------------------------------------------------------------
# threshold
# ---------------------------------------------------------------------------------------------
def test_threshold_moves_predictions():
    classes = ["normal", "glaucoma"]  # positive = index 1
    p = np.array([0.05, 0.3, 0.5, 0.7, 0.95])
    probs = np.stack([1 - p, p], 1)
    y = np.array([0, 0, 1, 1, 1])
    expect = {
        0.0: [1, 1, 1, 1, 1],
        0.3: [0, 1, 1, 1, 1],  # p == threshold counts as positive
        0.5: [0, 0, 1, 1, 1],
        0.51: [0, 0, 0, 1, 1],
        0.96: [0, 0, 0, 0, 0],
    }
    for t, want in expect.items():
        out, pred = classification_metrics(y, probs, classes, threshold=t)
        assert pred.tolist() == want, t
        assert out["threshold"] == t
    # everything flagged: all positives caught, no negative cleared
    out, _ = classification_metrics(y, probs, classes, threshold=0.0)
    assert out["sensitivity"] == 1.0 and out["specificity"] == 0.0
    # nothing flagged: ppv undefined, specificity perfect
    out, _ = classification_metrics(y, probs, classes, threshold=0.96)
    assert out["sensitivity"] == 0.0 and out["specificity"] == 1.0 and out["ppv"] is None
    # the threshold does not change the ranking metric
    aucs = {classification_metrics(y, probs, classes, threshold=t)[0]["roc_auc"] for t in expect}
    assert len(aucs) == 1


def test_threshold_is_monotone():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.5 * rng.random(400) + 0.4 * y, 0, 1)
    sens, spec = [], []
    for t in np.linspace(0, 1, 21):
        at = binary_at_threshold(y, p, t)
        sens.append(at["sensitivity"])
        spec.append(at["specificity"])
    assert all(a >= b for a, b in zip(sens, sens[1:], strict=False))
    assert all(a <= b for a, b in zip(spec, spec[1:], strict=False))


# ---------------------------------------------------------------------------------------------
# undefined cases
# ---------------------------------------------------------------------------------------------
def test_one_class_present_gives_no_auc():
    classes = ["normal", "glaucoma"]
    p = np.array([0.2, 0.7, 0.9])
    probs = np.stack([1 - p, p], 1)
    y = np.array([1, 1, 1])  # all glaucoma
    out, _ = classification_metrics(y, probs, classes)
    assert out["roc_auc"] is None
    assert out["specificity"] is None  # no negatives
    assert out["sensitivity"] == pytest.approx(2 / 3)
    assert roc_auc(y, probs, 1) is None
    assert roc_auc(np.zeros(3, int), probs, 1) is None


def test_no_positives_gives_no_sensitivity():
    classes = ["normal", "glaucoma"]
    p = np.array([0.2, 0.7, 0.1, 0.4])
    probs = np.stack([1 - p, p], 1)
    y = np.zeros(4, int)  # all normal
    out, _ = classification_metrics(y, probs, classes)
    assert out["sensitivity"] is None
    assert out["specificity"] == pytest.approx(3 / 4)
    assert out["npv"] == pytest.approx(1.0)
    assert out["ppv"] == 0.0  # one flagged, wrongly
    assert out["roc_auc"] is None
    at = binary_at_threshold(np.zeros(4, int), p, 0.5)
    assert at["sensitivity"] is None and at["tp"] == 0 and at["fn"] == 0


def test_multiclass_missing_class_gives_no_auc():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), 20)
    y = np.array([0, 1] * 10)  # class 2 never occurs: one-vs-rest AUC of class 2 is undefined
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a legitimate case: no scikit-learn warning reaches the user
        out, _ = classification_metrics(y, probs, ["a", "b", "c"])
    assert out["roc_auc"] is None
    assert out["accuracy"] == pytest.approx(accuracy_score(y, probs.argmax(1)))
    assert out["confusion_matrix"] == confusion_matrix(y, probs.argmax(1), labels=[0, 1, 2]).tolist()


# ---------------------------------------------------------------------------------------------
# patient bootstrap
# ---------------------------------------------------------------------------------------------
def _two_eye_study(n_patients: int, seed: int):
    """Each patient has one diagnosis and two eyes with correlated scores."""
    rng = np.random.default_rng(seed)
    diagnosis = rng.integers(0, 2, n_patients)
    patient_effect = rng.normal(size=n_patients) + 1.2 * diagnosis
    patients, y, score = [], [], []
    for i in range(n_patients):
        for _eye in range(2):
            patients.append(f"P{i:04d}")
            y.append(diagnosis[i])
            score.append(patient_effect[i] + 0.3 * rng.normal())
    return patients, np.array(y), 1 / (1 + np.exp(-np.array(score)))


def test_bootstrap_contains_point_estimate():
    patients, y, p = _two_eye_study(150, seed=1)
    probs = np.stack([1 - p, p], 1)
    point = roc_auc(y, probs, 1)
    ci = patient_bootstrap(lambda ix: roc_auc(y[ix], probs[ix], 1), patients, n_resamples=200, seed=0)
    assert ci is not None
    lo, hi = ci
    assert 0.5 < lo < point < hi <= 1.0
    assert hi - lo < 0.3
    sens = patient_bootstrap(lambda ix: binary_at_threshold(y[ix], p[ix], 0.5)["sensitivity"],
                             patients, n_resamples=300, seed=0)
    assert sens is not None
    assert sens[0] <= binary_at_threshold(y, p, 0.5)["sensitivity"] <= sens[1]


def _per_patient_values(n_patients: int, images_per_patient: int, seed: int):
    rng = np.random.default_rng(seed)
    per_patient = rng.normal(size=n_patients)
    values = np.repeat(per_patient, images_per_patient)
    patients = [f"P{i}" for i in np.repeat(np.arange(n_patients), images_per_patient)]
    return values, patients


def test_bootstrap_narrows_with_more_patients():
    widths = {}
    for n in (20, 400):
        values, patients = _per_patient_values(n, 2, seed=n)
        lo, hi = patient_bootstrap(lambda ix, v=values: float(v[ix].mean()), patients,
                                   n_resamples=400, seed=0)
        widths[n] = hi - lo
    # the width scales like 1/sqrt(n): sqrt(400/20) ~ 4.5
    assert widths[400] < widths[20] / 2.5


def _image_bootstrap(stat, n_images: int, n_resamples: int, seed: int, alpha: float = 0.05):
    """What a naive bootstrap would do: resample images, ignoring who they belong to."""
    rng = np.random.default_rng(seed)
    vals = [stat(rng.integers(0, n_images, n_images)) for _ in range(n_resamples)]
    return tuple(np.quantile(vals, [alpha / 2, 1 - alpha / 2]))


def test_bootstrap_resamples_patients_not_images():
    # 30 patients, 50 identical images each: only 30 independent observations
    values, patients = _per_patient_values(30, 50, seed=2)
    order = np.random.default_rng(0).permutation(len(values))  # patients' images interleaved
    values = values[order]
    patients = [patients[i] for i in order]

    def stat(ix):
        return float(values[ix].mean())

    lo, hi = patient_bootstrap(stat, patients, n_resamples=400, seed=0)
    ilo, ihi = _image_bootstrap(stat, len(values), n_resamples=400, seed=0)
    # the image-level interval is ~sqrt(50) ~ 7 times too narrow
    assert hi - lo > 4 * (ihi - ilo)
    assert lo < values.mean() < hi


def test_bootstrap_draws_whole_patients():
    rng = np.random.default_rng(4)
    sizes = rng.integers(1, 6, 25)  # patients with 1..5 images
    patients = [f"P{i}" for i, s in enumerate(sizes) for _ in range(s)]
    rng.shuffle(patients)  # a patient's images are not next to each other
    images_of: dict[str, set[int]] = {}
    for i, pid in enumerate(patients):
        images_of.setdefault(pid, set()).add(i)
    seen: list[np.ndarray] = []

    def record(ix):
        seen.append(np.array(ix, copy=True))
        return 0.0

    assert patient_bootstrap(record, patients, n_resamples=50, seed=1) == (0.0, 0.0)
    assert len(seen) == 50
    for ix in seen:
        counts = Counter(ix.tolist())
        n_drawn = 0
        for imgs in images_of.values():
            mult = {counts.get(i, 0) for i in imgs}
            assert len(mult) == 1, "a patient was drawn with only part of its images"
            n_drawn += mult.pop()
        assert n_drawn == len(images_of)  # as many patients drawn as there are patients
    # and the draws differ (it is a resample, not the identity)
    assert any(len(set(ix.tolist())) < len(patients) for ix in seen)


def test_bootstrap_is_seeded():
    patients, y, p = _two_eye_study(60, seed=3)
    probs = np.stack([1 - p, p], 1)

    def stat(ix):
        return roc_auc(y[ix], probs[ix], 1)

    a = patient_bootstrap(stat, patients, n_resamples=100, seed=5)
    b = patient_bootstrap(stat, patients, n_resamples=100, seed=5)
    c = patient_bootstrap(stat, patients, n_resamples=100, seed=6)
    assert a == b
    assert a != c


def test_bootstrap_none_when_mostly_undefined():
    patients = [f"P{i}" for i in range(40) for _ in range(2)]
    assert patient_bootstrap(lambda ix: None, patients, n_resamples=100) is None
    assert patient_bootstrap(lambda ix: float("nan"), patients, n_resamples=100) is None
    # only one patient has the disease: sensitivity needs that patient drawn at least twice
    # (P ~ 0.26), so it is undefined in most resamples
    y = np.zeros(80, int)
    y[:2] = 1
    p = np.linspace(0, 1, 80)

    def rare(ix):
        return binary_at_threshold(y[ix], p[ix], 0.5)["sensitivity"] if (y[ix].sum() >= 4) else None

    assert patient_bootstrap(rare, patients, n_resamples=200, seed=0) is None
    # one positive patient drawn at least once (P ~ 0.64): defined in most resamples -> an interval
    probs = np.stack([1 - p, p], 1)
    assert patient_bootstrap(lambda ix: roc_auc(y[ix], probs[ix], 1), patients,
                             n_resamples=200, seed=0) is not None


def test_bootstrap_no_patients():
    assert patient_bootstrap(lambda ix: 1.0, [], n_resamples=10) is None
    assert patient_bootstrap(lambda ix: 1.0, ["P1"], n_resamples=0) is None
