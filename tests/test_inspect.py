"""`nfx inspect`: every file of pydicom-data decoded or explained; stable --json keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nfx import api
from nfx.console import Printer

KEYS = {"n_files", "n_images", "classes", "n_patients", "bad_files", "modalities",
        "photometric_interpretations", "bit_depths", "image_sizes", "duplicates",
        "duplicates_across_classes", "warnings"}


def _data_store_files() -> list[Path]:
    import data_store

    return sorted(p for p in (Path(data_store.__file__).parent / "data").iterdir() if p.is_file())


@pytest.fixture(scope="module")
def store_folder(tmp_path_factory):
    """Every file of pydicom-data, alternately under two label folders."""
    root = tmp_path_factory.mktemp("store")
    files = _data_store_files()
    for i, f in enumerate(files):
        d = root / ("a" if i % 2 else "b")
        d.mkdir(exist_ok=True)
        shutil.copy(f, d / f.name)
    return root, len(files)


def test_every_pydicom_data_file_is_decoded_or_explained(store_folder):
    root, n = store_folder
    r = api.inspect(root, Printer(quiet=True), workers=2)
    assert KEYS <= set(r)
    assert r["n_files"] == n
    assert r["n_images"] + len(r["bad_files"]) == n
    assert r["n_images"] > 40
    for b in r["bad_files"]:
        assert set(b) == {"path", "reason"} and b["reason"] and "\n" not in b["reason"]
    reasons = {Path(b["path"]).name: b["reason"] for b in r["bad_files"]}
    assert "--frame" in reasons["emri_small.dcm"]
    assert "truncated" in reasons["emri_small_jpeg_2k_lossless_too_short.dcm"]
    assert {"CT", "MR", "US", "CR"} <= set(r["modalities"])
    assert {"MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR"} <= set(r["photometric_interpretations"])
    assert {"8", "16"} <= set(r["bit_depths"])
    h = r["image_sizes"]["height"]
    assert h["min"] <= h["median"] <= h["max"]
    assert set(r["classes"]) == {"a", "b"}
    assert sum(c["images"] for c in r["classes"].values()) == r["n_images"]
    json.dumps(r)  # serialisable as is


def test_frame_option_turns_multiframe_files_into_images(store_folder):
    root, n = store_folder
    r = api.inspect(root, Printer(quiet=True), frame=0, workers=2)
    assert r["n_images"] + len(r["bad_files"]) == n
    assert not [b for b in r["bad_files"] if "multi-frame" in b["reason"]]


def test_duplicates_imbalance_and_unsupported(tiny_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_data / "png", root)
    normal = sorted((root / "normal").glob("*.png"))
    for f in sorted((root / "glaucoma").glob("*.png"))[2:]:
        f.unlink()  # leave 2 glaucoma images: imbalance
    shutil.copy(normal[0], root / "glaucoma" / "copy.png")  # identical file, other label
    shutil.copy(normal[1], root / "normal" / "again.png")  # identical file, same label
    (root / "normal" / "notes.txt").write_text("x")
    r = api.inspect(root, Printer(quiet=True), workers=1)
    assert r["n_images"] + len(r["bad_files"]) == r["n_files"]
    assert [Path(b["path"]).name for b in r["bad_files"]] == ["notes.txt"]
    assert len(r["duplicates"]) == 2
    assert [sorted(Path(p).name for p in g) for g in r["duplicates_across_classes"]] == [
        sorted([normal[0].name, "copy.png"])]
    assert r["n_patients"] == 0 and r["formats"] == {"PNG": r["n_images"]}
    text = " ".join(r["warnings"])
    assert "class imbalance" in text and "different labels" in text and "no patient id" in text


def _nfx(*args):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "nfx", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_json(tiny_data):
    r = _nfx("inspect", tiny_data / "dicom", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert KEYS <= set(rep)
    assert rep["n_images"] == 24 and rep["n_patients"] == 12 and rep["bad_files"] == []
    assert rep["classes"]["normal"]["patients"] + rep["classes"]["glaucoma"]["patients"] >= 12
    assert rep["modalities"] == {"OP": 24}


def test_cli_table_and_errors(tiny_data, tmp_path):
    r = _nfx("inspect", tiny_data / "png")
    assert r.returncode == 0 and "class normal" in r.stderr and "no patient id" in r.stderr
    r = _nfx("inspect", tmp_path / "nope")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "not found" in r.stderr
