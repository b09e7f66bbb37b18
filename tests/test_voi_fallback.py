"""--voi-fallback: the rule for grayscale DICOMs without any VOI is applied per image, leaves
files with a window or VOI LUT alone, is recorded in config.json / model.json / the ONNX metadata
and used unchanged by every later verb; records made before the option mean `stored`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from nfx.data.dicom import decode_dicom
from nfx.records import InputSpec, ModelInfo, voi_of

TEST_FILES = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"


def test_rules_on_a_ct_without_window():
    path = TEST_FILES / "CT_small.dcm"  # signed 16-bit, no window: nearly flat under `stored`
    stored, minmax, pct = (decode_dicom(path, voi=r)[..., 0] for r in ("stored", "minmax", "percentile"))
    assert np.ptp(stored) < 0.05
    assert minmax.min() == 0.0 and minmax.max() == 1.0
    # minmax is a per-image affine map of stored: the same picture, stretched
    np.testing.assert_allclose((stored - stored.min()) / np.ptp(stored), minmax, atol=1e-5)
    assert (pct == 0).mean() >= 0.004 and (pct == 1).mean() >= 0.004  # 0.5 % saturated at each end
    assert len(np.unique(stored.astype(np.float16))) < 100 < len(np.unique(minmax.astype(np.float16)))


def test_files_with_a_window_ignore_the_rule():
    path = TEST_FILES / "MR_small.dcm"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if ds.get("WindowCenter") is None:
        path = next(p for p in sorted(TEST_FILES.glob("*.dcm"))
                    if pydicom.dcmread(p, stop_before_pixels=True, force=True).get("WindowCenter") is not None
                    and str(pydicom.dcmread(p, stop_before_pixels=True, force=True).get(
                        "PhotometricInterpretation", "")).startswith("MONOCHROME"))
    a, b = decode_dicom(path, voi="stored"), decode_dicom(path, voi="minmax")
    np.testing.assert_array_equal(a, b)


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown VOI fallback"):
        voi_of("auto")
    with pytest.raises(ValueError, match="unknown VOI fallback"):
        InputSpec(size=32, mean=(0.5,), std=(0.5,), resize="squish", voi="clahe")


def test_recorded_in_model_json_and_onnx_metadata_old_records_mean_stored(tmp_path):
    info = ModelInfo(arch="a", classes=("x", "y"), input=InputSpec(32, (0.5,), (0.5,), "squish", voi="minmax"))
    assert info.to_json()["voi_fallback"] == "minmax"
    assert ModelInfo.from_json(info.to_json()).input.voi == "minmax"
    meta = info.onnx_metadata() if hasattr(info, "onnx_metadata") else None
    if meta is not None:
        assert meta["nfx_voi_fallback"] == "minmax"
        assert ModelInfo.from_onnx_metadata(meta).input.voi == "minmax"
        old = {k: v for k, v in meta.items() if k != "nfx_voi_fallback"}
        assert ModelInfo.from_onnx_metadata(old).input.voi == "stored"
    old_json = {k: v for k, v in info.to_json().items() if k != "voi_fallback"}
    assert ModelInfo.from_json(old_json).input.voi == "stored"


def test_a_run_records_the_default_and_evaluates_with_it(tiny_run):
    run = Path(tiny_run.run_dir)
    assert json.loads((run / "config.json").read_text())["data"]["voi_fallback"] == "minmax"
    assert json.loads((run / "model.json").read_text())["voi_fallback"] == "minmax"


def test_cli_option_is_validated(tiny_data, tmp_path):
    from tests.test_corpus import cli

    code, _, err = cli("finetune", tiny_data / "dicom", "--voi-fallback", "clahe", "--out", tmp_path)
    assert code == 1 and "--voi-fallback must be one of" in err.strip().splitlines()[-1]
