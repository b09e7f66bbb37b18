"""Real-file tests of nfx's DICOM decoding (nfx/data/dicom.py).

Every expected image is computed here independently, in the plainest way, from pydicom's own
reference functions (ds.pixel_array, apply_modality_lut, apply_voi_lut, apply_color_lut) and the
rule the module docstring states:

    decode → palette → modality LUT → VOI (LUT sequence, else window, else the full
    BitsStored range after the modality LUT) → scale to [0, 1] by the real output range
    → MONOCHROME1 inversion

Files come from pydicom-data (module `data_store`, a dev dependency) and from the small and
deliberately broken files pydicom ships in pydicom/data/test_files. They are located by path in
the installed packages: pydicom.data.get_testdata_files() is never called (it goes to the network).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
data_store = pytest.importorskip("data_store", reason="pydicom-data (dev dependency) not installed")

from pydicom.dataelem import DataElement  # noqa: E402
from pydicom.pixels import (  # noqa: E402
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    convert_color_space,
    get_decoder,
    pixel_array,
)
from pydicom.uid import JPEGBaseline8Bit  # noqa: E402

from nfx.data.dicom import decode_dicom, is_dicom, read_header, to_unit  # noqa: E402
from nfx.errors import BadFileError  # noqa: E402

DATA = Path(os.path.dirname(data_store.__file__)) / "data"
TEST_FILES = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"
DICOMDIR = TEST_FILES / "dicomdirtests" / "DICOMDIR"

DATA_STORE_FILES = sorted(DATA.glob("*.dcm"))
PYDICOM_FILES = sorted(TEST_FILES.glob("*.dcm")) + [DICOMDIR]

ATOL = 1e-6  # float32 output vs float64 reference

# The broken files make pydicom warn (end of file before a delimiter, invalid IS value, ...):
# expected here, and what matters is that decode_dicom then raises BadFileError.
pytestmark = pytest.mark.filterwarnings(r"ignore::UserWarning:pydicom\.")


# ---------------------------------------------------------------------------- helpers

_OUTCOMES: dict[tuple[str, int | None], np.ndarray | BadFileError] = {}


def outcome(path: Path, frame: int | None = None) -> np.ndarray | BadFileError:
    """decode_dicom, memoised (the large radiographs are decoded by several tests). Any
    exception other than BadFileError propagates and fails the calling test."""
    key = (str(path), frame)
    if key not in _OUTCOMES:
        try:
            img = decode_dicom(path, frame=frame)
            img.flags.writeable = False
            _OUTCOMES[key] = img
        except BadFileError as e:
            _OUTCOMES[key] = e
    return _OUTCOMES[key]


def decode(path: Path, frame: int | None = None) -> np.ndarray:
    out = outcome(path, frame)
    assert not isinstance(out, BadFileError), f"{path.name}: unexpected BadFileError: {out.reason}"
    return out


def bad_reason(path: Path, frame: int | None = None) -> str:
    with pytest.raises(BadFileError) as info:
        decode_dicom(path, frame=frame)
    reason = info.value.reason
    assert reason and reason.strip(), "BadFileError without a reason"
    return reason


def assert_contract(img: np.ndarray, channels: int | None = None) -> None:
    assert isinstance(img, np.ndarray)
    assert img.dtype == np.float32
    assert img.ndim == 3
    assert img.shape[2] in (1, 3)
    if channels is not None:
        assert img.shape[2] == channels
    assert img.shape[0] > 0 and img.shape[1] > 0
    assert np.isfinite(img).all()
    assert img.min() >= 0.0 and img.max() <= 1.0


def stored_range(ds) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def rescaled(value: float, ds) -> float:
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        return value * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return value


def windowed_reference(ds, frame_pixels: np.ndarray | None = None) -> np.ndarray:
    """pydicom's windowing (first window) scaled to [0, 1] by the output range pydicom windows
    onto: the BitsStored range passed through Rescale Slope/Intercept (PS3.3 C.11.2.1.2)."""
    px = ds.pixel_array if frame_pixels is None else frame_pixels
    out = apply_voi_lut(apply_modality_lut(px, ds), ds, prefer_lut=False)
    lo, hi = stored_range(ds)
    y_min, y_max = rescaled(lo, ds), rescaled(hi, ds)
    return (out - y_min) / (y_max - y_min)


def read(path: Path):
    return pydicom.dcmread(path)


# ---------------------------------------------------------------- every file: the contract


@pytest.mark.parametrize("path", [*DATA_STORE_FILES, *PYDICOM_FILES],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_file_decodes_or_is_a_bad_file(path):
    """Every pydicom-data file, and pydicom's own test files (truncated, mis-encoded and
    non-image objects among them)."""
    out = outcome(path)
    if isinstance(out, BadFileError):
        assert out.reason.strip()
    else:
        assert_contract(out)


def test_the_data_store_holds_the_files_these_tests_use():
    names = {p.name for p in DATA_STORE_FILES}
    assert len(names) >= 60
    assert {"RG1_UNCR.dcm", "MR2_J2KR.dcm", "OBXXXX1A.dcm", "vlut_04.dcm", "mlut_18.dcm"} <= names


# ------------------------------------------------------------------------- greyscale VOI


def test_monochrome1_chest_xray_is_inverted_after_windowing():
    path = DATA / "RG1_UNCR.dcm"
    ds = read(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "WindowCenter" in ds
    img = decode(path)
    assert_contract(img, channels=1)
    expected = 1.0 - windowed_reference(ds)
    np.testing.assert_allclose(img[..., 0], expected, atol=ATOL)

    # Semantics: in MONOCHROME1 the *lowest* stored values (bone, collimated edges) are
    # displayed white, so after decoding they must be the brightest pixels.
    raw = ds.pixel_array
    low, high = raw <= np.percentile(raw, 5), raw >= np.percentile(raw, 95)
    assert img[..., 0][low].mean() > img[..., 0][high].mean() + 0.3
    assert np.corrcoef(raw.ravel().astype(np.float64), img[..., 0].ravel())[0, 1] < -0.9


def test_ct_rescale_slope_intercept_and_window_in_hounsfield_units():
    path = DATA / "693_UNCR.dcm"
    ds = read(path)
    assert ds.Modality == "CT" and float(ds.RescaleIntercept) == -1024.0
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 100.0)
    img = decode(path)
    assert_contract(img, channels=1)
    np.testing.assert_allclose(img[..., 0], windowed_reference(ds), atol=ATOL)

    # Window 40/100 (LINEAR): HU ≤ −10 is black (air, fat), HU > 89 is white (bone, contrast).
    hu = apply_modality_lut(ds.pixel_array, ds)
    assert (hu <= -10).any() and (hu > 89).any()
    assert (img[..., 0][hu <= -10] == 0.0).all()
    assert (img[..., 0][hu > 89] == 1.0).all()
    mid = (hu > 0) & (hu < 80)
    assert ((img[..., 0][mid] > 0.0) & (img[..., 0][mid] < 1.0)).all()


def test_ct_without_window_uses_the_full_rescaled_stored_range():
    path = TEST_FILES / "CT_small.dcm"
    ds = read(path)
    assert "WindowCenter" not in ds and float(ds.RescaleIntercept) == -1024.0
    img = decode(path)
    lo, hi = stored_range(ds)  # signed 16 bit
    y_lo, y_hi = rescaled(lo, ds), rescaled(hi, ds)
    expected = (apply_modality_lut(ds.pixel_array, ds) - y_lo) / (y_hi - y_lo)
    np.testing.assert_allclose(img[..., 0], expected, atol=ATOL)


@pytest.mark.parametrize(
    "folder, name",
    [
        (DATA, "MR2_UNCR.dcm"),  # MR, Rescale Slope 3.77
        (TEST_FILES, "MR_small.dcm"),  # MR, signed 16 bit
        (DATA, "RG3_UNCR.dcm"),  # MONOCHROME1 10 bit
        (DATA, "MR-SIEMENS-DICOM-WithOverlays.dcm"),  # two windows: the first is used
        (DATA, "JPGLosslessP14SV1_1s_1f_8b.dcm"),  # JPEG lossless SV1
        (DATA, "bad_sequence.dcm"),  # JPEG lossless CT, two windows
        (TEST_FILES, "693_J2KI.dcm"),  # JPEG 2000 lossy CT
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_windowed_greyscale_matches_pydicom(folder, name):
    path = folder / name
    ds = read(path)
    img = decode(path)
    assert_contract(img, channels=1)
    expected = windowed_reference(ds)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        expected = 1.0 - expected
    np.testing.assert_allclose(img[..., 0], expected, atol=ATOL)


def test_mr_is_not_inverted_and_uses_its_window():
    path = DATA / "MR2_UNCR.dcm"
    ds = read(path)
    assert ds.Modality == "MR" and ds.PhotometricInterpretation == "MONOCHROME2"
    img = decode(path)[..., 0]
    raw = ds.pixel_array
    assert np.corrcoef(raw.ravel().astype(np.float64), img.ravel())[0, 1] > 0.9
    values = apply_modality_lut(raw, ds)
    assert (img[values >= float(ds.WindowCenter) + float(ds.WindowWidth) / 2] == 1.0).all()


def test_voi_lut_sequence_is_applied_and_scaled_by_the_lut_range():
    path = DATA / "vlut_04.dcm"
    ds = read(path)
    assert "VOILUTSequence" in ds and "WindowCenter" not in ds
    img = decode(path)
    assert_contract(img, channels=1)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    out = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, prefer_lut=True)
    expected = (out - lut.min()) / (lut.max() - lut.min())
    np.testing.assert_allclose(img[..., 0], expected, atol=ATOL)


def test_voi_lut_is_really_applied_us_and_ow_encoded():
    """vlut_04's LUT is a linear ramp; reverse it (as US values, then as OW bytes) to see that
    the LUT, not the stored range, decides the output."""
    ds = read(DATA / "vlut_04.dcm")
    item = ds.VOILUTSequence[0]
    ramp = [int(v) for v in item.LUTData]
    assert ramp == sorted(ramp) and min(ramp) == 0
    px = ds.pixel_array
    item.LUTData = ramp[::-1]
    reversed_img = to_unit(px, ds)[..., 0]
    expected = apply_voi_lut(px, ds, prefer_lut=True) / max(ramp)
    np.testing.assert_allclose(reversed_img, expected, atol=ATOL)
    assert np.corrcoef(px.ravel().astype(np.float64), reversed_img.ravel())[0, 1] < -0.99
    item["LUTData"] = DataElement(0x00283006, "OW", np.asarray(ramp[::-1], "<u2").tobytes())
    np.testing.assert_allclose(to_unit(px, ds)[..., 0], reversed_img, atol=ATOL)


def test_modality_lut_sequence_is_applied_and_scaled_by_its_output_bits():
    path = DATA / "mlut_18.dcm"
    ds = read(path)
    assert "ModalityLUTSequence" in ds and "WindowCenter" not in ds and "VOILUTSequence" not in ds
    img = decode(path)
    assert_contract(img, channels=1)
    out_bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
    expected = apply_modality_lut(ds.pixel_array, ds) / (2**out_bits - 1)
    np.testing.assert_allclose(img[..., 0], expected, atol=ATOL)


def test_modality_lut_is_really_applied():
    """mlut_18's LUT is a linear ramp; square it to see that the LUT decides the output."""
    ds = read(DATA / "mlut_18.dcm")
    item = ds.ModalityLUTSequence[0]
    n = int(item.LUTDescriptor[0]) or 2**16
    item.LUTData = [int(v) for v in (np.linspace(0.0, 1.0, n) ** 2 * 65535).round()]
    px = ds.pixel_array
    img = to_unit(px, ds)[..., 0]
    np.testing.assert_allclose(img, apply_modality_lut(px, ds) / 65535.0, atol=ATOL)
    lo, hi = stored_range(ds)
    np.testing.assert_allclose(img, ((px.astype(np.float64) - lo) / (hi - lo)) ** 2, atol=1e-3)


def test_negative_rescale_slope_keeps_below_window_black():
    """pydicom windows onto (y_min, y_max) = stored range × slope + intercept, so a negative
    slope makes y_min the larger value; below the window must still decode to 0."""
    ds = read(TEST_FILES / "MR_small.dcm")
    ds.RescaleSlope, ds.RescaleIntercept = -1, 0
    ds.WindowCenter, ds.WindowWidth = -600, 800
    values = -ds.pixel_array.astype(np.float64)
    img = to_unit(ds.pixel_array, ds)[..., 0]
    assert_contract(img[..., None], channels=1)
    below, above = values <= -1000.5, values > -200.5
    assert below.any() and above.any()
    assert (img[below] == 0.0).all() and (img[above] == 1.0).all()
    out = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, prefer_lut=False)
    lo, hi = stored_range(ds)
    y_min, y_max = rescaled(lo, ds), rescaled(hi, ds)  # y_min > y_max here
    np.testing.assert_allclose(img, (out - y_min) / (y_max - y_min), atol=ATOL)


def test_invalid_window_width_is_a_bad_file(tmp_path):
    ds = read(TEST_FILES / "MR_small.dcm")
    ds.WindowWidth = 0  # LINEAR windowing needs a width ≥ 1
    path = tmp_path / "zero_width.dcm"
    ds.save_as(path)
    assert "Window Width" in bad_reason(path)


# --------------------------------------------------------------------------------- colour


def test_rgb_ultrasound():
    path = DATA / "US1_UNCR.dcm"
    ds = read(path)
    assert ds.Modality == "US" and ds.PhotometricInterpretation == "RGB"
    img = decode(path)
    assert_contract(img, channels=3)
    np.testing.assert_allclose(img, ds.pixel_array / 255.0, atol=ATOL)
    assert np.abs(img[..., 0] - img[..., 2]).max() > 0.1  # real colour, not grey


@pytest.mark.parametrize("name", ["SC_rgb_16bit.dcm", "SC_rgb_32bit.dcm"])
def test_rgb_deeper_than_8_bits_matches_the_8_bit_twin(name):
    ds = read(DATA / name)
    img = decode(DATA / name)
    np.testing.assert_allclose(img, ds.pixel_array / (2.0 ** int(ds.BitsStored) - 1), atol=ATOL)
    np.testing.assert_allclose(img, decode(DATA / "SC_rgb.dcm"), atol=1e-3)


def test_ybr_full_file_ends_as_rgb():
    ybr_path, rgb_path = DATA / "SC_ybr_full_uncompressed.dcm", DATA / "SC_rgb.dcm"
    ds = read(ybr_path)
    assert ds.PhotometricInterpretation == "YBR_FULL"
    img, rgb = decode(ybr_path), decode(rgb_path)
    assert_contract(img, channels=3)
    expected = convert_color_space(pixel_array(ybr_path, raw=True), "YBR_FULL", "RGB") / 255.0
    np.testing.assert_allclose(img, expected, atol=ATOL)
    # Same picture as the RGB original (up to YBR rounding), and far from the raw YBR values.
    assert np.abs(img - rgb).mean() < 1 / 255 and np.abs(img - rgb).max() <= 8 / 255
    assert np.abs(img - pixel_array(ybr_path, raw=True) / 255.0).max() > 0.5


def test_jpeg_baseline_ybr_422_frame_is_rgb():
    path = DATA / "color3d_jpeg_baseline.dcm"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.PhotometricInterpretation == "YBR_FULL_422" and int(ds.NumberOfFrames) > 1
    img = decode(path, frame=0)
    assert_contract(img, channels=3)
    raw = pixel_array(path, index=0, raw=True)  # decoded JPEG, still YCbCr
    expected = convert_color_space(raw, "YBR_FULL", "RGB") / 255.0
    np.testing.assert_allclose(img, expected, atol=ATOL)
    assert np.abs(img - raw / 255.0).max() > 0.2


@pytest.mark.parametrize(
    "name, lut_bits",
    [("OBXXXX1A.dcm", 16), ("gdcm-US-ALOKA-16.dcm", 16)],  # plain, and segmented palette
)
def test_palette_colour_matches_apply_color_lut(name, lut_bits):
    path = DATA / name
    ds = read(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    assert int(ds.RedPaletteColorLookupTableDescriptor[2]) == lut_bits
    img = decode(path)
    assert_contract(img, channels=3)
    expected = apply_color_lut(ds.pixel_array, ds) / (2.0**lut_bits - 1)
    np.testing.assert_allclose(img, expected, atol=ATOL)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10


@pytest.mark.parametrize(
    "name, twin",
    [
        ("OBXXXX1A_expb.dcm", "OBXXXX1A.dcm"),  # big-endian palette LUT data
        ("OBXXXX1A_rle.dcm", "OBXXXX1A.dcm"),
        ("gdcm-US-ALOKA-16_big.dcm", "gdcm-US-ALOKA-16.dcm"),  # big-endian segmented LUT
    ],
)
def test_palette_twins_decode_equal(name, twin):
    np.testing.assert_array_equal(decode(DATA / name), decode(DATA / twin))


def test_bare_dataset_without_dicm_header_is_read():
    """OT-PAL-8-face.dcm has no preamble, no "DICM" and no file meta (a pre-Part-10 file)."""
    path = DATA / "OT-PAL-8-face.dcm"
    with open(path, "rb") as f:
        assert f.read(132)[128:132] != b"DICM"
    ds = pydicom.dcmread(path, force=True)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian  # as pydicom detects
    img = decode(path)
    assert_contract(img, channels=3)
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    expected = apply_color_lut(ds.pixel_array, ds) / (2.0**bits - 1)
    np.testing.assert_allclose(img, expected, atol=ATOL)
    assert read_header(path).Rows == img.shape[0]


# ------------------------------------------------------------------ compressed syntaxes


@pytest.mark.parametrize(
    "folder, name, twin, frame",
    [
        (DATA, "RG1_J2KR.dcm", "RG1_UNCR.dcm", None),  # JPEG 2000 lossless, MONOCHROME1
        (DATA, "MR2_J2KR.dcm", "MR2_UNCR.dcm", None),  # JPEG 2000 lossless MR
        (DATA, "693_J2KR.dcm", "693_UNCR.dcm", None),  # JPEG 2000 lossless CT
        (DATA, "US1_J2KR.dcm", "US1_UNCR.dcm", None),  # JPEG 2000 lossless YBR_RCT → RGB
        (DATA, "RG1_J2KI.dcm", "RG1_UNCI.dcm", None),  # JPEG 2000 lossy vs its decompression
        (DATA, "OBXXXX1A_rle.dcm", "OBXXXX1A.dcm", None),  # RLE palette
        (DATA, "emri_small_RLE.dcm", "emri_small.dcm", 3),  # RLE multi-frame
        (DATA, "emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm", 3),  # JPEG-LS lossless
        (DATA, "emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm", 3),
        (DATA, "emri_small_big_endian.dcm", "emri_small.dcm", 3),  # explicit VR big endian
        (TEST_FILES, "MR_small_RLE.dcm", "MR_small.dcm", None),
        (TEST_FILES, "MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", None),
        (TEST_FILES, "SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm", None),  # JPEG lossless RGB
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_lossless_syntax_decodes_equal_to_uncompressed_twin(folder, name, twin, frame):
    twin_folder = DATA if (DATA / twin).exists() else folder
    ts = pydicom.dcmread(folder / name, stop_before_pixels=True).file_meta.TransferSyntaxUID
    img = decode(folder / name, frame=frame)
    assert_contract(img)
    np.testing.assert_array_equal(img, decode(twin_folder / twin, frame=frame), err_msg=ts.name)


def test_jpeg_lossless_without_window_matches_pydicom():
    path = DATA / "JPEG-LL.dcm"
    ds = read(path)
    assert ds.file_meta.TransferSyntaxUID.name.startswith("JPEG Lossless")
    assert "WindowCenter" not in ds and "RescaleSlope" not in ds
    lo, hi = stored_range(ds)
    expected = (ds.pixel_array.astype(np.float64) - lo) / (hi - lo)
    np.testing.assert_allclose(decode(path)[..., 0], expected, atol=ATOL)


# ------------------------------------------------------------------------- multi-frame


def test_multiframe_without_frame_names_the_frame_option():
    reason = bad_reason(DATA / "SC_rgb_2frame.dcm")
    assert "--frame" in reason and "2 frames" in reason


def test_multiframe_frame_index_selects_that_frame():
    path = DATA / "SC_rgb_2frame.dcm"
    frames = read(path).pixel_array
    second = decode(path, frame=1)
    assert_contract(second, channels=3)
    np.testing.assert_allclose(second, frames[1] / 255.0, atol=ATOL)
    np.testing.assert_allclose(decode(path, frame=0), frames[0] / 255.0, atol=ATOL)
    assert not np.array_equal(second, decode(path, frame=0))
    np.testing.assert_array_equal(decode(path, frame=-1), second)
    assert "out of range" in bad_reason(path, frame=2)


def test_single_frame_file_gives_its_only_frame_for_any_frame_index_with_a_note():
    """A series mixing single- and multi-frame files trains with --frame N for any N a multi-frame
    file has: single-frame files give their only frame (one note each); a multi-frame file
    without frame N is still refused."""
    path = TEST_FILES / "CT_small.dcm"
    plain = decode(path)
    for n in (0, 1, 7, -1):
        notes: list[str] = []
        np.testing.assert_array_equal(decode_dicom(path, frame=n, notes=notes), plain)
        assert notes == [f"a single-frame file: --frame {n} does not apply, its only frame was used"]
    reason = bad_reason(DATA / "SC_rgb_2frame.dcm", frame=7)
    assert "out of range" in reason and "2 frames" in reason


def test_multiframe_greyscale_frame_follows_the_pipeline():
    path = DATA / "emri_small.dcm"
    ds = read(path)
    assert int(ds.NumberOfFrames) == 10 and "WindowCenter" not in ds
    img = decode(path, frame=4)
    lo, hi = stored_range(ds)
    expected = (ds.pixel_array[4].astype(np.float64) - lo) / (hi - lo)
    np.testing.assert_allclose(img[..., 0], expected, atol=ATOL)


# ------------------------------------------------------------------ unusable files


@pytest.mark.parametrize(
    "name, words",
    [
        ("test-SR.dcm", ("no pixel data", "SR")),
        ("rtplan.dcm", ("no pixel data", "RT Plan")),
        ("rtplan_truncated.dcm", ("no pixel data",)),
        ("waveform_ecg.dcm", ("no pixel data", "Waveform")),
    ],
)
def test_objects_without_pixel_data_are_bad_files(name, words):
    reason = bad_reason(TEST_FILES / name)
    for word in words:
        assert word in reason


def test_dicomdir_is_dicom_but_a_bad_file():
    assert is_dicom(DICOMDIR)
    assert "DICOMDIR" in bad_reason(DICOMDIR)


@pytest.mark.parametrize(
    "path",
    [
        TEST_FILES / "MR_truncated.dcm",  # pixel data shorter than Rows × Columns
        TEST_FILES / "rtplan_truncated.dcm",
        TEST_FILES / "badVR.dcm",  # Number of Frames "1A"
        TEST_FILES / "JPEG-lossy.dcm",  # corrupt JPEG stream
        TEST_FILES / "no_meta.dcm",  # no "DICM", not an image
        TEST_FILES / "rtstruct.dcm",  # no "DICM", RT Structure Set
        TEST_FILES / "meta_missing_tsyntax.dcm",
        TEST_FILES / "nested_priv_SQ.dcm",
        DATA / "emri_small_jpeg_2k_lossless_too_short.dcm",  # ends inside the pixel data
    ],
    ids=lambda p: p.name,
)
def test_broken_files_are_bad_files(path):
    bad_reason(path)


def test_truncated_compressed_file_says_truncated():
    reason = bad_reason(DATA / "emri_small_jpeg_2k_lossless_too_short.dcm", frame=0)
    assert "truncated" in reason


def test_corrupt_stream_does_not_blame_missing_decoders():
    """JPEG-lossy.dcm fails in the installed decoders: the reason must say that, not ask the
    user to install packages that are already there."""
    reason = bad_reason(TEST_FILES / "JPEG-lossy.dcm")
    assert "pip install" not in reason
    assert "could not be decoded" in reason and "pylibjpeg" in reason


def test_missing_decoder_names_the_package(monkeypatch):
    decoder = get_decoder(JPEGBaseline8Bit)
    monkeypatch.setattr(decoder, "_available", {})
    missing = {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")}
    monkeypatch.setattr(decoder, "_unavailable", missing)
    reason = bad_reason(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm")
    assert "no decoder for JPEG Baseline" in reason
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in reason


@pytest.mark.parametrize(
    "path",
    [
        TEST_FILES / "MR_small.dcm",  # native
        TEST_FILES / "JPEG2000.dcm",
        TEST_FILES / "SC_rgb_rle.dcm",
        TEST_FILES / "MR_small_jpeg_ls_lossless.dcm",
        TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    ],
    ids=lambda p: p.name,
)
def test_files_cut_short_are_bad_files(tmp_path, path):
    """Cut in the preamble, the meta, the header, and anywhere in the pixel data (up to its
    last byte; what follows it, e.g. trailing padding, is not needed for the image)."""
    data = path.read_bytes()
    pixels = pydicom.dcmread(path).PixelData
    start = data.find(pixels)
    end = start + len(pixels)
    assert start > 0
    for cut in (0, 1, 64, 128, 132, 140, 300, start - 4, start + 8, (start + end) // 2, end - 1):
        cut_path = tmp_path / f"cut_{cut}.dcm"
        cut_path.write_bytes(data[:cut])
        with pytest.raises(BadFileError):
            decode_dicom(cut_path)


def test_image_header_without_pixel_data_says_truncated(tmp_path):
    data = (TEST_FILES / "MR_small.dcm").read_bytes()
    start = data.find(pydicom.dcmread(TEST_FILES / "MR_small.dcm").PixelData)
    path = tmp_path / "header_only.dcm"
    path.write_bytes(data[: start - 12])  # ends just before the Pixel Data element
    assert "truncated" in bad_reason(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello, not a dicom file\n" * 20,
        bytes(range(256)) * 40,
        b"\x89PNG\r\n\x1a\n" + b"\0" * 500,
    ],
    ids=["empty", "text", "bytes", "png"],
)
def test_non_dicom_content_with_dcm_suffix_is_a_bad_file(tmp_path, content):
    path = tmp_path / "fake.dcm"
    path.write_bytes(content)
    assert is_dicom(path)
    with pytest.raises(BadFileError):
        decode_dicom(path)
    with pytest.raises(BadFileError):
        read_header(path)


# --------------------------------------------------------------------------- is_dicom


def test_is_dicom(tmp_path):
    src = (TEST_FILES / "CT_small.dcm").read_bytes()
    assert is_dicom(TEST_FILES / "CT_small.dcm")
    (tmp_path / "UPPER.DCM").write_bytes(src)
    assert is_dicom(tmp_path / "UPPER.DCM")
    (tmp_path / "image.dicom").write_bytes(src)
    assert is_dicom(tmp_path / "image.dicom")
    (tmp_path / "IM0001").write_bytes(src)  # extension-less, with the DICM marker
    assert is_dicom(tmp_path / "IM0001")
    expected = decode(TEST_FILES / "CT_small.dcm")
    np.testing.assert_array_equal(decode_dicom(tmp_path / "IM0001"), expected)
    (tmp_path / "README").write_bytes(b"not dicom" * 40)
    assert not is_dicom(tmp_path / "README")
    (tmp_path / "short").write_bytes(b"DICM")
    assert not is_dicom(tmp_path / "short")
    (tmp_path / "image.png").write_bytes(src)
    assert not is_dicom(tmp_path / "image.png")
    assert not is_dicom(tmp_path / "missing")


# ---------------------------------------------------------------- tolerated defects (ingestion)

def test_jpeg_with_a_partial_spectrum_scan_header_is_repaired_with_a_note():
    """JPEG-lossy.dcm declares Se=0 in a sequential JPEG's scan header; pydicom-data ships the
    fixed file (JPGExtended.dcm): the repaired decode must equal it exactly."""
    notes: list[str] = []
    img = decode_dicom(TEST_FILES / "JPEG-lossy.dcm", notes=notes)
    assert len(notes) == 1 and "JPEG scan header" in notes[0]
    np.testing.assert_array_equal(img, decode_dicom(TEST_FILES / "JPGExtended.dcm"))
    # strict (no notes list): refused as before
    assert "could not be decoded" in bad_reason(TEST_FILES / "JPEG-lossy.dcm")


def test_repair_leaves_valid_and_progressive_jpegs_alone():
    import io

    from PIL import Image

    from nfx.data.dicom import repair_sequential_jpeg

    buf = io.BytesIO()
    Image.new("L", (16, 16), 7).save(buf, "JPEG")
    assert repair_sequential_jpeg(buf.getvalue()) is None  # baseline, already 0..63
    prog = io.BytesIO()
    Image.new("L", (16, 16), 7).save(prog, "JPEG", progressive=True)
    assert repair_sequential_jpeg(prog.getvalue()) is None  # progressive scans are partial by design
    assert repair_sequential_jpeg(b"not a jpeg") is None


def test_unparseable_number_of_frames_is_taken_from_the_pixel_data():
    """badVR.dcm: Number of Frames '1A'; its uncompressed pixel data holds 15 frames of 10×10×32 bit."""
    notes: list[str] = []
    with pytest.raises(BadFileError, match="multi-frame .15 frames.*--frame"):
        decode_dicom(TEST_FILES / "badVR.dcm", notes=notes)
    assert "'1A'" in notes[0] and "15 frame" in notes[0]
    img = decode_dicom(TEST_FILES / "badVR.dcm", frame=3, notes=[])
    assert img.shape == (10, 10, 1)


def test_cache_reports_notes_on_every_use(tmp_path):
    import shutil

    from nfx.data.cache import ImageCache

    src = tmp_path / "x.dcm"
    shutil.copy(TEST_FILES / "JPEG-lossy.dcm", src)
    for _ in range(2):  # decode, then a cache hit
        cache = ImageCache(tmp_path / "cache", 32, resize="squish")
        filled = cache.fill([str(src)], workers=1)
        assert filled.bad == [] and filled.entries[0] is not None
        assert [p for p, _ in filled.notes] == [str(src)] and "repaired" in filled.notes[0][1]
