"""Fuzzing the reader with hypothesis: byte mutations of real DICOM files (pydicom's and
pydicom-data's test files) and of PNG/JPEG files. Contract of `decode_file`: a valid image
(float32 H×W×C, C in {1, 3}, values finite and in [0, 1]) or nfx's own BadFileError — never
another exception, never a hang (each case runs under a 20 s alarm)."""

from __future__ import annotations

import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nfx.data.images import decode_file
from nfx.errors import BadFileError

ROOT = Path(__file__).resolve().parents[1]


def _dicom_seeds() -> list[Path]:
    from pydicom.data import get_testdata_file

    # small ones, one per codec: raw CT/MR, RLE, JPEG 2000, baseline JPEG (YBR), JPEG-LS
    names = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_gdcm.dcm",
             "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"]
    out = []
    for n in names:
        try:
            p = get_testdata_file(n)
        except Exception:
            p = None
        if p:
            out.append(Path(p))
    return out


def _image_seeds(tmp: Path) -> list[Path]:
    from PIL import Image

    png = sorted((ROOT / "sample_data" / "png").rglob("*.png"))[0]
    jpg = tmp / "seed.jpg"
    Image.open(png).convert("RGB").save(jpg, quality=90)
    grey = tmp / "seed16.png"
    Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 61).save(grey)
    return [png, jpg, grey]


class _Hang(Exception):
    pass


def _alarm(_sig, _frame):
    raise _Hang()


mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 255)),
        st.tuples(st.just("cut"), st.floats(0.05, 1), st.just(0)),
        st.tuples(st.just("insert"), st.floats(0, 1), st.integers(0, 255)),
        st.tuples(st.just("zero"), st.floats(0, 1), st.integers(1, 64)),
    ),
    min_size=1, max_size=6,
)


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for kind, where, val in ops:
        if not b:
            break
        i = min(len(b) - 1, int(where * len(b)))
        if kind == "flip":
            b[i] = val
        elif kind == "cut":
            b = b[: max(1, int(where * len(b)))]
        elif kind == "insert":
            b[i:i] = bytes([val]) * 4
        else:
            b[i:i + val] = bytes(min(val, len(b) - i))
    return bytes(b)


def _check(path: Path) -> str:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = decode_file(path)
    except BadFileError:
        return "bad"
    except _Hang:
        pytest.fail(f"{path.name}: decoding did not finish within 20 s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert isinstance(img, np.ndarray) and img.dtype == np.float32, (path, type(img), getattr(img, "dtype", None))
    assert img.ndim == 3 and img.shape[2] in (1, 3) and min(img.shape[:2]) >= 1, img.shape
    assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
    return "ok"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzzseeds")
    files = _dicom_seeds() + _image_seeds(tmp)
    assert len(files) >= 6, files
    for f in files:  # the seeds themselves are good files
        assert _check(f) == "ok", f
    return [(f.suffix or ".dcm", f.read_bytes()) for f in files]


SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(which=st.integers(0, 100), ops=mutations)
def test_mutated_files_decode_or_are_bad_files(seeds, tmp_path, which, ops):
    suffix, data = seeds[which % len(seeds)]
    p = tmp_path / f"fuzz{suffix}"
    p.write_bytes(_mutate(data, ops))
    event(f"{suffix}: {_check(p)}")  # --hypothesis-show-statistics: how many decode vs are refused


@SETTINGS
@given(data=st.binary(min_size=0, max_size=600), suffix=st.sampled_from([".dcm", ".png", ".jpg", ".tif", ""]))
def test_random_bytes_are_bad_files(tmp_path, data, suffix):
    p = tmp_path / f"random{suffix}"
    p.write_bytes((b"\0" * 128 + b"DICM" + data) if suffix in (".dcm", "") and data[:1] == b"\0" else data)
    _check(p)


def test_decompression_bomb_is_a_bad_file(tmp_path):
    # a tiny PNG declaring 40000 × 40000 pixels: refused as a bad file, never decoded
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    p = tmp_path / "bomb.png"
    p.write_bytes(data)
    with pytest.raises(BadFileError, match="bomb.png"):
        decode_file(p)
