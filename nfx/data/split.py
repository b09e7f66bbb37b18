"""Patient-grouped, label-stratified train/valid splits (pure python/numpy).

Every image of a patient lands in the same split, so a patient's other eye or follow-up visit
never leaks from training into validation. Files without a patient id are their own group.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from nfx.errors import DataError


def group_keys(paths: Sequence[str], patients: Sequence[str | None]) -> list[str]:
    """The grouping key per file: the patient id, or the file itself when there is none."""
    return [f"patient:{p}" if p else f"file:{f}" for f, p in zip(paths, patients, strict=True)]


def grouped_stratified_split(
    labels: Sequence[str], groups: Sequence[str], valid_pct: float, seed: int
) -> list[str]:
    """Assign 'train' / 'valid' to each item; groups never straddle; per-label valid share ≈ valid_pct.

    Each group is stratified by its majority label; within a label its groups are shuffled
    (seeded) and moved to validation until that label's image count reaches its target.
    Every label keeps at least one group (of which it is the majority) and at least one image in
    training: a patient with mixed labels stays in training when it holds the last training
    images of one of its labels.
    """
    if len(labels) != len(groups):
        raise ValueError("labels and groups differ in length")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    label_counts = {g: Counter(labels[i] for i in idx) for g, idx in members.items()}
    by_label: dict[str, list[str]] = defaultdict(list)
    for g, counts in label_counts.items():
        by_label[counts.most_common(1)[0][0]].append(g)
    train_left = Counter(labels)  # training images per label, updated as groups move to valid

    rng = random.Random(seed)
    valid_groups: set[str] = set()
    for label in sorted(by_label):
        gs = sorted(by_label[label])
        rng.shuffle(gs)
        n_images = sum(len(members[g]) for g in gs)
        target = valid_pct * n_images
        taken = n_taken = 0
        for g in gs:
            if len(gs) - n_taken <= 1:
                break  # keep at least one group of every label for training
            if taken >= target:
                break
            if any(train_left[lab] <= n for lab, n in label_counts[g].items()):
                continue  # it holds the last training images of a (minority) label
            # take the group if that moves the count closer to the target (always take the first)
            size = len(members[g])
            if taken == 0 or abs(taken + size - target) <= abs(taken - target):
                valid_groups.add(g)
                train_left.subtract(label_counts[g])
                taken += size
                n_taken += 1
    return ["valid" if groups[i] in valid_groups else "train" for i in range(len(labels))]


def find_leaks(groups: Sequence[str], splits: Sequence[str]) -> dict[str, set[str]]:
    """Patients (groups) that appear in more than one split."""
    seen: dict[str, set[str]] = defaultdict(set)
    for g, s in zip(groups, splits, strict=True):
        seen[g].add(s)
    return {g: s for g, s in seen.items() if len(s) > 1 and g.startswith("patient:")}


def check_no_leaks(groups: Sequence[str], splits: Sequence[str], allow: bool = False,
                   paths: Sequence[str] | None = None) -> list[str]:
    """Raise (or, with allow=True, return the list of) patients found in two splits. With `paths`,
    the error names, for each patient shown, one file on each side, so a user who only sees
    pseudonyms can find and move them."""
    leaks = find_leaks(groups, splits)
    names = sorted(g.split(":", 1)[1] for g in leaks)
    if leaks and not allow:
        shown_ids = names[:3]
        if paths is not None:
            parts = []
            for name in shown_ids:
                idx = [i for i, g in enumerate(groups) if g == f"patient:{name}"]
                sides = {}
                for i in idx:
                    sides.setdefault(splits[i], paths[i])
                parts.append(f"{name}: " + " vs ".join(f"{sp} {f}" for sp, f in sorted(sides.items())))
            shown = "; ".join(parts)
        else:
            shown = ", ".join(shown_ids)
        more = f"; … {len(names) - len(shown_ids)} more" if len(names) > len(shown_ids) else ""
        raise DataError(
            f"{len(names)} patient(s) appear in more than one split ({shown}{more}); "
            "move all of a patient's images into one split, or pass --allow-patient-leak"
        )
    return names


def merge_copy_groups(groups: Sequence[str], copy_of: Sequence[int]) -> list[str]:
    """Split groups that keep copies together: items joined when they share a group (patient) or
    are copies of one image (`copy_of[i]`: the first index of i's copy group), transitively."""
    import numpy as np

    from nfx.data.copy_search import components

    first: dict[str, int] = {}
    n = len(groups)
    same_group = [first.setdefault(g, i) for i, g in enumerate(groups)]
    a = np.concatenate([np.arange(n), np.arange(len(copy_of))])
    b = np.concatenate([np.asarray(same_group, dtype=np.int64), np.asarray(copy_of, dtype=np.int64)])
    root = components(n, a, b)  # each item's first member: the group it is named after
    return [groups[r] for r in root.tolist()]


def copy_sets(copy_of: Sequence[int]) -> list[list[int]]:
    """Copy groups of two or more items, as index lists in order."""
    sets: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(copy_of):
        sets[int(c)].append(i)
    return [m for _, m in sorted(sets.items()) if len(m) > 1]


def copy_label_conflicts(labels: Sequence[str], copy_of: Sequence[int]) -> list[list[int]]:
    """Copy groups whose members carry different labels."""
    return [m for m in copy_sets(copy_of) if len({labels[i] for i in m}) > 1]


def copy_straddles(splits: Sequence[str], copy_of: Sequence[int]) -> list[list[int]]:
    """Copy groups whose members sit in different splits."""
    return [m for m in copy_sets(copy_of) if len({splits[i] for i in m}) > 1]


def assign_splits(
    labels: Sequence[str],
    groups: Sequence[str],
    user_splits: Sequence[str | None],
    valid_pct: float,
    seed: int,
    allow_leak: bool = False,
    split_groups: Sequence[str] | None = None,
    paths: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Final 'train' / 'valid' / 'test' per item and the patients found in two splits.

    - No user splits: a grouped, stratified split of everything.
    - User splits with a 'valid' part: kept as given; items without a split go to training.
    - User splits without 'valid' (e.g. train/ and test/ only): user 'test' stays test (never
      trained on or used for model selection); validation is carved out of the rest, grouped.
    A patient in two splits is a DataError unless allow_leak (then it is returned, for the
    caller to warn about and record). `split_groups` (default `groups`): what the grouped split
    keeps together — patients joined with copy groups (`merge_copy_groups`); the leak check
    always uses the patient `groups`.
    """
    split_groups = groups if split_groups is None else split_groups
    if not (len(labels) == len(groups) == len(user_splits)):
        raise ValueError("labels, groups and user_splits differ in length")
    final: list[str | None] = list(user_splits)
    has_valid = "valid" in final
    pool = [i for i, s in enumerate(final) if s is None or (s == "train" and not has_valid)]
    if pool and not has_valid:
        sub = grouped_stratified_split([labels[i] for i in pool], [split_groups[i] for i in pool], valid_pct, seed)
        for i, s in zip(pool, sub, strict=True):
            final[i] = s
    out = [s or "train" for s in final]
    leaks = check_no_leaks(groups, out, allow=allow_leak, paths=paths) if any(user_splits) else []
    return out, leaks


def split_summary(labels: Sequence[str], patients: Sequence[str | None], splits: Sequence[str]) -> dict:
    """Per split: images, patients (with an id), images per label."""
    out: dict[str, dict] = {}
    for sp in sorted(set(splits)):
        idx = [i for i, s in enumerate(splits) if s == sp]
        out[sp] = {
            "images": len(idx),
            "patients": len({patients[i] for i in idx if patients[i]}),
            "per_label": dict(sorted(Counter(labels[i] for i in idx).items())),
        }
    return out


def split_counts(patients, splits) -> dict[str, dict[str, int]]:
    """Images and patients (with an id) per split, in train / valid / test order. One helper for
    a fresh run (samples), a resumed run and the evaluation report (rows of splits.csv)."""
    out: dict[str, dict[str, int]] = {}
    order = ["train", "valid", "test"] + sorted(set(splits) - {"train", "valid", "test"})
    for sp in order:
        idx = [i for i, s in enumerate(splits) if s == sp]
        if idx:
            out[sp] = {"images": len(idx), "patients": len({patients[i] for i in idx if patients[i]})}
    return out


def grouped_stratified_folds(labels: Sequence[str], groups: Sequence[str], k: int, seed: int) -> list[int]:
    """Fold 1..k per item: a group (patient, copy group) is never in two folds, and every label's
    images are spread evenly. Groups are taken per majority label, largest first (ties shuffled,
    seeded), each into the fold holding the fewest images of that label so far (then the fewest
    images overall) — the greedy rule of scikit-learn's StratifiedGroupKFold, kept here to stay
    pure and to share nfx's groups."""
    if k < 2:
        raise ValueError("k must be at least 2")
    if len(labels) != len(groups):
        raise ValueError("labels and groups differ in length")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    if len(members) < k:
        raise ValueError(f"{len(members)} group(s) cannot fill {k} folds")
    rng = random.Random(seed)
    order = sorted(members)
    rng.shuffle(order)
    label_counts = {g: Counter(labels[i] for i in members[g]) for g in order}
    majority = {g: label_counts[g].most_common(1)[0][0] for g in order}
    order.sort(key=lambda g: (majority[g], -len(members[g])))  # stable: the shuffle breaks ties
    per_label = [Counter() for _ in range(k)]
    sizes = [0] * k
    fold_of: dict[str, int] = {}
    for g in order:
        f = min(range(k), key=lambda j: (per_label[j][majority[g]], sizes[j], j))
        fold_of[g] = f
        per_label[f].update(label_counts[g])
        sizes[f] += len(members[g])
    return [fold_of[g] + 1 for g in groups]
