"""The one-command GPU suite (benchmarks/gpu_suite.sh): what can be checked without a GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the suite would run")
def test_gpu_suite_refuses_without_a_gpu_in_one_line():
    r = subprocess.run(["bash", str(SUITE)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "NFX_PY": sys.executable}, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "no CUDA GPU" in r.stderr and "GPU machine" in r.stderr


def test_gpu_suite_steps_exist_and_cover_the_gpu_tests():
    text = SUITE.read_text()
    subprocess.run(["bash", "-n", str(SUITE)], check=True)  # parses
    scripts = set(re.findall(r"benchmarks/(\w+\.py)", text))
    assert {"bench_agc.py", "bench_train.py", "bench_persample.py", "bench_inference.py"} <= scripts
    assert all((ROOT / "benchmarks" / s).is_file() for s in scripts)
    assert "tests/test_gpu.py" in text and "tests/test_distributed.py" in text
    limits = [int(n) for n in re.findall(r"^\s*step \S+ (\d+) ", text, re.M)]
    assert len(limits) == 6 and sum(limits) <= 600  # one command, at most 10 minutes


def test_copy_benchmark_labels_pydicom_data_encodings_as_one_picture():
    """docs/COPIES.md's precision rests on these labels: pydicom-data's encodings of one picture
    (RG3_J2KR / RG3_UNCR, OBXXXX1A / _rle_2frame, JPEG-LL / JPEG2000) are one family (counted as
    re-encodings, never as distinct images), while other test files stay apart."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import copies as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    fam = lambda name: bench._family(Path(name))  # noqa: E731
    for same in [("RG3_J2KR.dcm", "RG3_UNCR.dcm", "RG3_J2KI.dcm"), ("OBXXXX1A.dcm", "OBXXXX1A_rle_2frame.dcm"),
                 ("JPEG-LL.dcm", "JPEG2000.dcm", "JPGExtended.dcm"), ("MR_small.dcm", "MR_small_RLE.dcm"),
                 ("693_J2KI.dcm", "693_UNCR.dcm")]:
        assert len({fam(n) for n in same}) == 1, same
    distinct = ["RG1_UNCR.dcm", "RG3_UNCR.dcm", "MR2_UNCR.dcm", "MR_small.dcm", "CT_small.dcm", "693_UNCR.dcm"]
    assert len({fam(n) for n in distinct}) == len(distinct)
    names = [n for g in bench.MRI_SAME_PICTURE for n in g]
    assert len(names) == len(set(names))  # a file in two reviewed groups would merge them silently


def test_out_of_fold_benchmark_pairs_images_and_standardises_per_fold():
    """docs/OOF.md's differences are paired by image; its diagnostic column z-scores each fold."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_oof as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import numpy as np

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    score = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 200), 0.01, 0.99)

    def arm(p, fold=None):
        return {"positive": "yes", "rows": [
            {"file": f"f{i}", "label": "yes" if y[i] else "no", "p_yes": str(p[i]), "fold": str(fold[i] if fold is not None else 1),
             "prediction": "yes" if p[i] >= 0.5 else "no"} for i in range(200)]}

    a = arm(score)
    same = bench.paired(a, arm(score), reps=200)
    assert same["d_auc"] == 0 and same["d_acc"] == 0 and same["auc_ci"] == (0, 0)
    worse = bench.paired(a, arm(np.full(200, 0.5) + rng.normal(0, 0.01, 200)), reps=200)
    assert worse["d_auc"] > 0.2 and worse["auc_ci"][0] > 0
    # a fold whose scores are squeezed towards 0.5: pooled AUC drops, the z-scored one does not
    fold = np.arange(200) % 2
    squeezed = np.where(fold == 1, 0.5 + (score - 0.5) * 0.05, score)
    pooled = arm(squeezed, fold)
    from sklearn.metrics import roc_auc_score

    per_fold = np.mean([roc_auc_score(y[fold == f], squeezed[fold == f]) for f in (0, 1)])
    assert roc_auc_score(y, squeezed) < per_fold - 0.03
    assert bench.standardised_auc(pooled) == pytest.approx(per_fold, abs=0.03)
    assert bench.mean_ci([0.1, 0.2, 0.3], signed=True).startswith("+0.200 (")
    # each change of the search is judged against a recipe that exists, never against itself
    assert set(bench.REFERENCE) <= set(bench.RECIPES) and set(bench.REFERENCE.values()) <= set(bench.RECIPES)
    assert all(k != v for k, v in bench.REFERENCE.items())


def _bench(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_a_regenerated_doc_never_drops_rows_it_showed(tmp_path):
    """The runs behind a generated doc live in a cache that a new machine lacks: regenerating from fewer
    runs must refuse (naming the section), not silently shrink the tables; the person-written reading stays."""
    doc = _bench("_doc")
    out = tmp_path / "X.md"
    table = ["## set A", "", "| arm | acc |", "|---|---|", "| a | 0.7 |", "| b | 0.8 |"]
    out.write_text("\n".join(table) + "\n## What it shows\n\nmy reading\n")
    with pytest.raises(SystemExit, match=r"set A: 2 → 1 rows"):
        doc.write_keeping_reading(out, table[:-1])
    assert "| b | 0.8 |" in out.read_text()  # untouched
    doc.write_keeping_reading(out, [*table, "| c | 0.9 |"])  # more rows (a new arm) is fine
    text = out.read_text()
    assert "| c | 0.9 |" in text and text.endswith("my reading\n")
    assert doc.table_rows(text) == {"set A": 3}


def test_out_of_fold_arm_records_round_trip_with_stable_bytes(tmp_path):
    """benchmarks/results/oof keeps what the report needs of each arm (committed, so docs/OOF.md regenerates
    without the runs); the same record writes the same bytes, and a record of another image size is not used."""
    bench = _bench("bench_oof")
    rec = {"accuracy": 0.75, "roc_auc": 0.8, "roc_auc_ci": [0.7, 0.9], "fold_acc": (0.7, 0.05), "fold_auc": (0.8, 0.04),
           "n": 2, "positive": "yes", "chosen": [8, 8], "lrs": [None, None],
           "rows": [{"file": "yes/a.png", "label": "yes", "prediction": "yes", "p_yes": "0.9", "fold": "1"},
                    {"file": "no/b.png", "label": "no", "prediction": "yes", "p_yes": "0.6", "fold": "2"}]}
    path = bench.save_record("mri-x-local-k5-s0", 64, rec, tmp_path)
    first = path.read_bytes()
    assert bench.save_record("mri-x-local-k5-s0", 64, rec, tmp_path).read_bytes() == first
    assert bench.load_record("mri-x-local-k5-s0", 64, tmp_path) == rec
    assert bench.load_record("mri-x-local-k5-s0", 96, tmp_path) is None
    assert bench.load_record("mri-x-other-k5-s0", 64, tmp_path) is None
    same = bench.paired(bench.load_record("mri-x-local-k5-s0", 64, tmp_path), rec, reps=50)
    assert same["d_acc"] == 0 and same["n"] == 2
