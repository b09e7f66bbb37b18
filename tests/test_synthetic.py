"""The sample-data generator: deterministic to the byte, DICOM and PNG hold the same pixels,
DICOM carries the patient and eye, and sample_data/ is what the generator makes."""

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from nfx.data.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_generation_is_byte_identical_for_a_seed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, n_patients=3, size=32, seed=5)
    generate(b, n_patients=3, size=32, seed=5)
    assert _files(a) == _files(b) and len(_files(a)) == 12
    for f in _files(a):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_dicom_and_png_agree_and_carry_patient_and_eye(tmp_path):
    generate(tmp_path, n_patients=2, size=32, seed=0)
    for dcm in (tmp_path / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(dcm)
        pid, eye = dcm.stem.split("_")
        assert ds.PatientID == pid and ds.ImageLaterality == ("R" if eye == "OD" else "L")
        png = tmp_path / "png" / dcm.parent.name / f"{dcm.stem}.png"
        assert np.array_equal(ds.pixel_array, np.asarray(Image.open(png)))


def test_sample_data_is_what_the_generator_makes(tmp_path):
    generate(tmp_path)  # the defaults `nfx sample-data` uses
    assert _files(tmp_path) == _files(ROOT / "sample_data")
    for f in _files(tmp_path):
        assert (tmp_path / f).read_bytes() == (ROOT / "sample_data" / f).read_bytes(), f
