"""Ordinary image files keep their real bit depth: 16-bit colour and grey are not cut to 8 bits."""

import cv2
import numpy as np
import pytest
from PIL import Image

from nfx.data.images import decode_image


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_colour_keeps_full_precision(tmp_path, suffix):
    rgb = np.zeros((4, 5, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 1000, 30000, 65535
    rgb[0, 0] = [1, 2, 3]  # below 8-bit resolution: lost if the file were read as 8 bits
    path = tmp_path / f"x{suffix}"
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = decode_image(path)
    assert out.dtype == np.float32 and out.shape == (4, 5, 3)
    np.testing.assert_allclose(out * 65535, rgb, atol=1e-2)


def test_16_bit_grey_png(tmp_path):
    grey = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    path = tmp_path / "g.png"
    Image.fromarray(grey).save(path)
    out = decode_image(path)
    assert out.shape == (4, 5, 1)
    np.testing.assert_allclose(out[..., 0] * 65535, grey, atol=1e-2)


def test_8_bit_colour_unchanged(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    path = tmp_path / "c.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_allclose(decode_image(path) * 255, rgb, atol=1e-3)


def test_non_finite_pixels_are_a_bad_file_with_a_reason(tmp_path):
    import warnings

    import pydicom
    from pydicom.data import get_testdata_file

    from nfx.data.images import decode_file
    from nfx.errors import BadFileError

    a = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    a[3, 4] = np.nan  # one NaN pixel would turn the whole image NaN through min/max
    Image.fromarray(a, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(BadFileError, match=r"nan\.tif: 1 pixel\(s\) are NaN or inf"):
        decode_file(tmp_path / "nan.tif")
    a[3, 4] = 0.5
    Image.fromarray(a, mode="F").save(tmp_path / "ok.tif")
    assert np.isfinite(decode_file(tmp_path / "ok.tif")).all()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope = "1e308"  # overflows to inf once applied
    ds.save_as(tmp_path / "huge_slope.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BadFileError, match=r"huge_slope\.dcm: pixel values are not finite"):
            decode_file(tmp_path / "huge_slope.dcm")


def test_a_camera_mpo_jpeg_is_its_primary_picture_and_a_multipage_tiff_is_refused(tmp_path):
    import subprocess
    import sys

    import numpy as np
    import pytest
    from PIL import Image

    from nfx.data.images import decode_image
    from nfx.errors import BadFileError

    a, b = Image.new("RGB", (16, 16), (200,) * 3), Image.new("RGB", (16, 16), (20,) * 3)
    mpo = tmp_path / "cam.jpg"
    # written by a fresh interpreter: Pillow's MPO writer fails inside the test process once the
    # imaging stack (cv2/albumentations) is loaded; reading is what is tested here
    subprocess.run([sys.executable, "-c", "from PIL import Image; a, b = (Image.new('RGB', (16, 16), (v,) * 3) "
                    f"for v in (200, 20)); a.save({str(mpo)!r}, 'MPO', save_all=True, append_images=[b])"], check=True)
    assert Image.open(mpo).format == "MPO" and Image.open(mpo).n_frames == 2
    assert abs(float(np.mean(decode_image(mpo))) - 200 / 255) < 0.02
    tif = tmp_path / "stack.tif"
    a.save(tif, save_all=True, append_images=[b])
    with pytest.raises(BadFileError, match="multi-page image .2 pages"):
        decode_image(tif)
