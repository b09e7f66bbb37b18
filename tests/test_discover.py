"""Discovery (folders, train/valid/test, labels CSV, bad files) and the patient-level split
path of finetune (nfx.workflows.finetune.split): no patient in two splits; leaking user splits refused."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from nfx.config import DataConfig, RunConfig
from nfx.console import Printer
from nfx.data.discover import discover
from nfx.errors import DataError
from nfx.workflows.finetune import split


def _copy(src_root: Path, dst: Path, fmt: str = "png") -> Path:
    shutil.copytree(src_root / fmt, dst)
    return dst


def _cfg(path, **data) -> RunConfig:
    return RunConfig(data=DataConfig(path=str(path), size=64, **data))


def _patients_per_split(samples, splits):
    seen = defaultdict(set)
    for s, sp in zip(samples, splits, strict=True):
        if s.patient:
            seen[s.patient].add(sp)
    return seen


# ---------------------------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------------------------
def test_class_folders_dicom_patient_from_header(tiny_data):
    d = discover(tiny_data / "dicom")
    assert d.classes == ["glaucoma", "normal"]
    assert len(d.samples) == 24 and d.n_files == 24 and not d.bad
    assert d.n_patients == 12
    assert d.patient_sources == {"dicom": 24}
    assert not d.user_splits


def test_png_patient_from_regex_or_none(tiny_data):
    assert discover(tiny_data / "png").n_patients == 0
    d = discover(tiny_data / "png", patient_regex=r"^(SYN\d+)_O[DS]")
    assert d.n_patients == 12 and d.patient_sources == {"regex": 24}
    with pytest.raises(DataError, match="patient-regex"):
        discover(tiny_data / "png", patient_regex="(")


def test_nothing_is_dropped_silently(tiny_data, tmp_path):
    root = _copy(tiny_data, tmp_path / "d")
    (root / "normal" / "notes.txt").write_text("not an image")
    (root / "normal" / "scan.gif").write_bytes(b"GIF89a")
    (root / "normal" / "broken.dcm").write_bytes(b"\0" * 200)
    (root / "normal" / ".hidden.png").write_bytes(b"x")  # hidden files are not data
    (root / "normal" / ".DS_Store").write_bytes(b"x")
    shutil.copy(next((root / "normal").glob("*.png")), root / "loose.png")
    (root / "README.md").write_text("about the data")  # documentation next to the folders is fine
    d = discover(root)
    reasons = dict(d.bad)
    assert len(d.samples) == 24
    assert d.n_files == 24 + 4 == len(d.samples) + len(d.bad)
    assert "unsupported file type (.txt)" in reasons[str(root / "normal" / "notes.txt")]
    assert "unsupported" in reasons[str(root / "normal" / "scan.gif")]
    assert "not a DICOM file" in reasons[str(root / "normal" / "broken.dcm")]
    assert "not in a label sub-folder" in reasons[str(root / "loose.png")]


def test_symlinks_are_followed_and_broken_ones_reported(tiny_data, tmp_path):
    import os

    root = _copy(tiny_data, tmp_path / "d")
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    for i, f in enumerate(sorted((root / "normal").glob("*.png"))[:3]):
        shutil.copy(f, extra / f"x{i}.png")
    os.symlink(extra, root / "normal" / "more")  # a symlinked sub-folder: its images are data
    os.symlink(tmp_path / "gone.png", root / "normal" / "dangling.png")  # target missing
    os.symlink(root / "normal", root / "normal" / "loop")  # points back up
    d = discover(root)
    reasons = dict(d.bad)
    assert len(d.samples) == 24 + 3
    assert sum(1 for s in d.samples if "/more/" in str(s.path)) == 3
    assert "broken symbolic link" in reasons[str(root / "normal" / "dangling.png")]
    assert "symbolic-link loop" in reasons[str(root / "normal" / "loop")]
    assert len(d.bad) == 2


def test_extensionless_dicom_is_found(tiny_data, tmp_path):
    root = _copy(tiny_data, tmp_path / "d", "dicom")
    src = next((root / "normal").glob("*.dcm"))
    src.rename(src.with_suffix(""))
    d = discover(root)
    s = [s for s in d.samples if s.path == str(src.with_suffix(""))]
    assert len(s) == 1 and s[0].patient and s[0].patient_source == "dicom"


def test_user_split_folders(tiny_data, tmp_path):
    root = tmp_path / "d"
    for sp, pats in (("train", range(1, 9)), ("valid", range(9, 11)), ("test", range(11, 13))):
        for f in (tiny_data / "dicom").rglob("*.dcm"):
            if int(f.name[3:7]) in pats:
                dst = root / sp / f.parent.name / f.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dst)
    (root / "stray").mkdir()
    shutil.copy(f, root / "stray" / f.name)
    d = discover(root)
    assert d.user_splits
    assert {s.split for s in d.samples} == {"train", "valid", "test"}
    assert [p for p, r in d.bad] == [str(root / "stray" / f.name)]
    assert "outside the train/valid/test folders" in d.bad[0][1]


# ---------------------------------------------------------------------------------------------
# labels CSV
# ---------------------------------------------------------------------------------------------
def _write_csv(path: Path, rows, header=("path", "label", "patient", "split")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_labels_csv(tiny_data, tmp_path):
    files = sorted((tiny_data / "png").rglob("*.png"))
    rows = [(str(f.relative_to(tiny_data / "png")), f.parent.name.upper(), f.name[:7], "") for f in files]
    rows.append(("normal/missing.png", "NORMAL", "X", ""))
    rows.append(rows[0])
    csv_path = _write_csv(tmp_path / "labels.csv", rows)
    d = discover(tiny_data / "png", labels=csv_path)
    assert d.classes == ["GLAUCOMA", "NORMAL"]  # labels come from the CSV, not the folders
    assert len(d.samples) == 24 and d.n_patients == 12 and d.patient_sources == {"csv": 24}
    reasons = [r for _, r in d.bad]
    assert len(reasons) == 2
    assert any("not found" in r for r in reasons) and any("listed twice" in r for r in reasons)
    assert not d.user_splits


def test_labels_csv_errors(tiny_data, tmp_path):
    f = next((tiny_data / "png").rglob("*.png"))
    bad_split = _write_csv(tmp_path / "a.csv", [(str(f), "x", "", "training-ish")])
    with pytest.raises(DataError, match="row 2.*not train, valid or test"):
        discover(tiny_data / "png", labels=bad_split)
    no_label = _write_csv(tmp_path / "b.csv", [(str(f), "P1")], header=("file", "patient"))
    with pytest.raises(DataError, match="no label column"):
        discover(tiny_data / "png", labels=no_label)
    with pytest.raises(DataError, match="labels file not found"):
        discover(tiny_data / "png", labels=tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------
# the split path of finetune
# ---------------------------------------------------------------------------------------------
def test_grouped_split_no_patient_in_two_splits(tiny_data, tmp_path):
    cfg = _cfg(tiny_data / "dicom", valid_pct=0.3)
    d = discover(cfg.data.path)
    p = Printer(quiet=True)
    splits = split(cfg, d.samples, p, tmp_path)
    assert set(splits) == {"train", "valid"}
    assert all(len(v) == 1 for v in _patients_per_split(d.samples, splits).values())
    summary = json.loads((tmp_path / "split_summary.json").read_text())
    assert summary["source"] == "grouped_stratified"
    assert sum(v["patients"] for v in summary["splits"].values()) == 12
    assert summary["patient_leaks"] == []


def test_no_patient_id_says_so(tiny_data):
    cfg = _cfg(tiny_data / "png")
    p = Printer(quiet=True)
    split(cfg, discover(cfg.data.path).samples, p)
    assert any("no patient id" in w for w in p.warnings)


def _leaky_csv(tiny_data, tmp_path) -> Path:
    """Patient SYN0001's two eyes: one in train, one in valid."""
    rows = []
    for f in sorted((tiny_data / "dicom").rglob("*.dcm")):
        n = int(f.name[3:7])
        split = "valid" if n >= 10 or f.name == "SYN0001_OS.dcm" else "train"
        rows.append((str(f), f.parent.name, "", split))
    return _write_csv(tmp_path / "leaky.csv", rows)


def test_leaking_user_split_is_refused_csv(tiny_data, tmp_path):
    cfg = _cfg(tiny_data / "dicom", labels=str(_leaky_csv(tiny_data, tmp_path)))
    d = discover(cfg.data.path, labels=cfg.data.labels)
    assert d.user_splits
    with pytest.raises(DataError, match=r"1 patient\(s\).*SYN0001.*--allow-patient-leak"):
        split(cfg, d.samples, Printer(quiet=True), tmp_path)


def test_leaking_user_split_allowed_is_warned_and_recorded(tiny_data, tmp_path):
    cfg = _cfg(tiny_data / "dicom", labels=str(_leaky_csv(tiny_data, tmp_path)), allow_patient_leak=True)
    d = discover(cfg.data.path, labels=cfg.data.labels)
    p = Printer(quiet=True)
    splits = split(cfg, d.samples, p, tmp_path)
    assert any("SYN0001" in w and "--allow-patient-leak" in w for w in p.warnings)
    summary = json.loads((tmp_path / "split_summary.json").read_text())
    assert summary["patient_leaks"] == ["SYN0001"] and summary["source"] == "user"
    assert splits == [s.split for s in d.samples]


def test_leaking_train_valid_folders_refused(tiny_data, tmp_path):
    root = tmp_path / "d"
    for f in (tiny_data / "dicom").rglob("*.dcm"):
        sp = "valid" if int(f.name[3:7]) > 9 or f.name == "SYN0002_OD.dcm" else "train"
        dst = root / sp / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
    cfg = _cfg(root)
    with pytest.raises(DataError, match="SYN0002"):
        split(cfg, discover(root).samples, Printer(quiet=True))


def test_user_test_split_is_kept_out_and_valid_carved_from_train(tiny_data, tmp_path):
    rows = []
    for f in sorted((tiny_data / "dicom").rglob("*.dcm")):
        rows.append((str(f), f.parent.name, "", "test" if int(f.name[3:7]) > 9 else "train"))
    cfg = _cfg(tiny_data / "dicom", labels=str(_write_csv(tmp_path / "t.csv", rows)), valid_pct=0.3)
    d = discover(cfg.data.path, labels=cfg.data.labels)
    splits = split(cfg, d.samples, Printer(quiet=True), tmp_path)
    assert set(splits) == {"train", "valid", "test"}
    for s, sp in zip(d.samples, splits, strict=True):
        assert (sp == "test") == (s.split == "test")
    assert all(len(v) == 1 for v in _patients_per_split(d.samples, splits).values())
    summary = json.loads((tmp_path / "split_summary.json").read_text())
    assert summary["splits"]["test"]["patients"] == 3
