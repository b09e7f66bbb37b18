"""Patient-grouped, label-stratified splits and the leak check."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from nfx.data.split import check_no_leaks, find_leaks, group_keys, grouped_stratified_split
from nfx.errors import DataError


def _random_study(seed: int):
    """Random group structure: patients with 1..6 images, some with mixed labels, some files
    without a patient id. Returns (paths, patients, labels)."""
    rng = random.Random(seed)
    label_names = ["normal", "glaucoma", "suspect", "other"][: rng.randint(2, 4)]
    paths, patients, labels = [], [], []
    n_patients = rng.randint(1, 40)
    for p in range(n_patients):
        main = rng.choice(label_names)
        n_images = rng.randint(1, 6)
        r = rng.random()
        if r < 0.15:  # mixed labels
            patient_labels = [rng.choice(label_names) for _ in range(n_images)]
        elif r < 0.25:  # a label that (usually) only ever occurs as a patient's minority label
            patient_labels = [main] * (n_images - 1) + ["rare"]
        else:
            patient_labels = [main] * n_images
        for k, lab in enumerate(patient_labels):
            paths.append(f"/data/{p}_{k}.dcm")
            patients.append(f"P{p:03d}")
            labels.append(lab)
    for k in range(rng.randint(0, 15)):  # no patient id: each file is its own group
        paths.append(f"/data/anon_{k}.png")
        patients.append(rng.choice([None, ""]))
        labels.append(rng.choice(label_names))
    order = list(range(len(paths)))
    rng.shuffle(order)  # a patient's files are not next to each other
    return [paths[i] for i in order], [patients[i] for i in order], [labels[i] for i in order]


def _by_group(groups, values):
    out = defaultdict(set)
    for g, v in zip(groups, values, strict=True):
        out[g].add(v)
    return out


# ---------------------------------------------------------------------------------------------
# group keys
# ---------------------------------------------------------------------------------------------
def test_group_keys():
    keys = group_keys(["a.dcm", "b.dcm", "c.png", "d.png"], ["P1", "P1", None, ""])
    assert keys == ["patient:P1", "patient:P1", "file:c.png", "file:d.png"]
    with pytest.raises(ValueError):
        group_keys(["a.dcm", "b.dcm"], ["P1"])


# ---------------------------------------------------------------------------------------------
# grouped_stratified_split
# ---------------------------------------------------------------------------------------------
def test_no_patient_in_two_splits_over_random_structures():
    for seed in range(300):
        paths, patients, labels = _random_study(seed)
        groups = group_keys(paths, patients)
        valid_pct = random.Random(seed).choice([0.1, 0.2, 0.3, 0.5])
        split = grouped_stratified_split(labels, groups, valid_pct, seed)
        assert len(split) == len(labels)
        assert set(split) <= {"train", "valid"}
        # no group (patient or file) straddles the splits
        assert all(len(s) == 1 for s in _by_group(groups, split).values()), seed
        assert find_leaks(groups, split) == {}
        assert check_no_leaks(groups, split) == []
        # every label keeps training images, and every label that is the majority of some group
        # keeps at least one such group for training
        train_labels = {lab for lab, s in zip(labels, split, strict=True) if s == "train"}
        assert train_labels == set(labels), seed
        members = defaultdict(list)
        for i, g in enumerate(groups):
            members[g].append(i)
        majority_groups = defaultdict(list)
        for g, idx in members.items():
            majority_groups[Counter(labels[i] for i in idx).most_common(1)[0][0]].append(g)
        for lab, gs in majority_groups.items():
            assert any(split[members[g][0]] == "train" for g in gs), (seed, lab)


def test_mixed_label_patient_does_not_take_a_label_out_of_training():
    # 'suspect' occurs only as the minority label of patient A; if A went to validation the
    # model would never see a 'suspect' image
    labels = ["glaucoma", "glaucoma", "suspect"] + ["glaucoma"] * 3 + ["normal"] * 6
    patients = ["A", "A", "A", "B", "C", "D"] + [f"N{i}" for i in range(6)]
    groups = group_keys([f"f{i}" for i in range(len(labels))], patients)
    for seed in range(50):
        split = grouped_stratified_split(labels, groups, 0.5, seed)
        assert split[2] == "train", seed
        assert "valid" in split


def _big_study(seed: int = 0):
    rng = random.Random(seed)
    labels, groups = [], []
    for lab, n_patients in (("normal", 900), ("glaucoma", 300), ("suspect", 120)):
        for p in range(n_patients):
            for _ in range(rng.randint(1, 3)):
                labels.append(lab)
                groups.append(f"patient:{lab}{p}")
    return labels, groups


@pytest.mark.parametrize("valid_pct", [0.1, 0.2, 0.35])
def test_valid_share_per_label_near_target(valid_pct):
    labels, groups = _big_study()
    split = grouped_stratified_split(labels, groups, valid_pct, seed=42)
    for lab in set(labels):
        idx = [i for i, lab_i in enumerate(labels) if lab_i == lab]
        share = sum(split[i] == "valid" for i in idx) / len(idx)
        assert share == pytest.approx(valid_pct, abs=0.02), lab


def test_zero_valid_pct_keeps_everything_in_training():
    labels, groups = _big_study()
    assert set(grouped_stratified_split(labels, groups, 0.0, seed=0)) == {"train"}


def test_every_label_keeps_a_training_group():
    # a label with one patient keeps it; with two, at most one goes to validation
    labels = ["rare"] * 4 + ["few"] * 2 + ["common"] * 20
    patients = ["R"] * 4 + ["F1", "F2"] + [f"C{i}" for i in range(20)]
    groups = group_keys([f"f{i}" for i in range(len(labels))], patients)
    for seed in range(30):
        split = grouped_stratified_split(labels, groups, 0.9, seed)
        assert split[:4] == ["train"] * 4
        assert "train" in split[4:6]
        assert "train" in split[6:] and "valid" in split[6:]


def test_deterministic_for_a_seed_and_different_for_another():
    labels, groups = _big_study()
    a = grouped_stratified_split(labels, groups, 0.2, seed=1)
    b = grouped_stratified_split(labels, groups, 0.2, seed=1)
    c = grouped_stratified_split(labels, groups, 0.2, seed=2)
    assert a == b
    assert a != c
    # the order the files come in does not matter either
    order = list(range(len(labels)))
    random.Random(0).shuffle(order)
    d = grouped_stratified_split([labels[i] for i in order], [groups[i] for i in order], 0.2, seed=1)
    assert [d[order.index(i)] for i in range(len(labels))] == a


def test_length_mismatch():
    with pytest.raises(ValueError):
        grouped_stratified_split(["a", "b"], ["patient:1"], 0.2, 0)


# ---------------------------------------------------------------------------------------------
# leak check on user-given splits
# ---------------------------------------------------------------------------------------------
def test_check_no_leaks_raises_naming_the_patient():
    paths = ["train/a.dcm", "train/b.dcm", "valid/c.dcm", "valid/d.dcm", "train/e.dcm"]
    patients = ["P7", "P1", "P7", "P2", "P3"]
    splits = ["train", "train", "valid", "valid", "train"]
    groups = group_keys(paths, patients)
    with pytest.raises(DataError) as err:
        check_no_leaks(groups, splits)
    msg = str(err.value)
    assert "P7" in msg
    assert "1 patient(s)" in msg
    assert "P1" not in msg and "P2" not in msg
    assert "--allow-patient-leak" in msg
    assert check_no_leaks(groups, splits, allow=True) == ["P7"]
    assert find_leaks(groups, splits) == {"patient:P7": {"train", "valid"}}


def test_check_no_leaks_many_patients():
    patients = [f"P{i}" for i in range(8)] * 2
    splits = ["train"] * 8 + ["test"] * 8
    groups = group_keys([f"f{i}" for i in range(16)], patients)
    with pytest.raises(DataError, match=r"8 patient\(s\).*…"):
        check_no_leaks(groups, splits)
    assert check_no_leaks(groups, splits, allow=True) == sorted(f"P{i}" for i in range(8))


def test_no_leaks_returns_empty():
    groups = group_keys(["a", "b", "c"], ["P1", "P1", "P2"])
    assert check_no_leaks(groups, ["train", "train", "valid"]) == []


def test_file_only_groups_are_never_leaks():
    # the same file name listed in two splits, no patient id: not a patient leak
    groups = group_keys(["x.png", "x.png", "y.png"], [None, "", None])
    splits = ["train", "valid", "valid"]
    assert find_leaks(groups, splits) == {}
    assert check_no_leaks(groups, splits) == []
    assert check_no_leaks(groups, splits, allow=True) == []
