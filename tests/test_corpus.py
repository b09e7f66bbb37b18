"""The bad-input corpus: every kind of broken input against the verb it concerns, run through the
real command line (in process), each ending in its expected outcome — one `error:` line naming
the file and the fix with exit code 1 and no traceback, a recorded skip (--skip-bad), or a
clean run. `NFX_RELIABILITY_DOC=1 pytest tests/test_corpus.py` writes docs/RELIABILITY.md, the
table input → outcome."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS: list[tuple[str, str, str, str]] = []  # (case, verb, expected, what happened)


def cli(*args) -> tuple[int, str, str]:
    """`nfx ARGS` in this process: (exit code, stdout, stderr)."""
    from nfx.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["nfx", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


@dataclass
class Case:
    name: str
    verb: str
    build: Callable[[Path, Path, Path], list]  # (work folder, tiny data, tiny run) → argv
    expect: str  # "error" | "skip" | "ok"
    needles: tuple[str, ...] = ()
    setup: Callable | None = None  # (monkeypatch, work folder) → None: a simulated fault


def _train(data, work, *extra):
    return ["finetune", data, "--arch", "test_nfnet", "--no-pretrained", "--size", "32", "--epochs", "1",
            "--bs", "4", "--workers", "0", "--out", work / "runs", *extra]


def _with(tiny: Path, work: Path, fmt: str = "png", files: dict | None = None) -> Path:
    """A copy of the tiny data set plus `files` (relative path → bytes, or a callable(path))."""
    root = work / "data"
    shutil.copytree(tiny / fmt, root)
    for rel, content in (files or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        content(p) if callable(content) else p.write_bytes(content)
    return root


def _png_bytes(tiny: Path) -> bytes:
    return sorted((tiny / "png" / "normal").glob("*.png"))[0].read_bytes()


def _noise_png() -> bytes:
    """A PNG that is no copy of any image of the tiny set (a copy under another label is refused)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _dcm(tiny: Path) -> Path:
    return sorted((tiny / "dicom" / "normal").glob("*.dcm"))[0]


def _bomb(p: Path) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                  + chunk(b"IEND", b""))


def _sr(p: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality, ds.PatientID = ds.file_meta.MediaStorageSOPClassUID, \
        ds.file_meta.MediaStorageSOPInstanceUID, "SR", "P1"
    ds.save_as(p, enforce_file_format=True)


def _multiframe(p: Path) -> None:
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("emri_small.dcm"), p)


def _nan_tiff(p: Path) -> None:
    a = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    a[1, 1] = np.nan
    Image.fromarray(a, mode="F").save(p)


def _mixed_modes(root: Path) -> None:
    src = Image.open(sorted((root / "normal").glob("*.png"))[0])
    for i, mode in enumerate(["L", "RGBA", "P", "I;16"]):
        im = src.convert("RGB").convert(mode) if mode != "I;16" else Image.fromarray(
            np.asarray(src.convert("L")).astype(np.uint16) * 257)
        im.save(root / "normal" / f"mode{i}.png")


def _csv(root: Path, text: str) -> Path:
    (root / "labels.csv").write_text(text)
    return root / "labels.csv"


def _csv_from_folders(root: Path, extra: str = "", header: str = "path,label") -> Path:
    rows = [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
    return _csv(root, header + "\n" + "\n".join(rows) + "\n" + extra)


def _split_lacking_class(w, t, r):
    root = w / "d"
    for f in sorted((t / "png").rglob("*.png")):
        sp = "valid" if f.parent.name == "glaucoma" or int(f.name[3:7]) > 8 else "train"
        (root / sp / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / sp / f.parent.name / f.name)
    return _train(root, w)


def _valid_lacking_class(w, t, r):
    root = w / "d"
    for f in sorted((t / "png").rglob("*.png")):
        sp = "valid" if f.parent.name == "glaucoma" and int(f.name[3:7]) % 3 == 0 else "train"
        (root / sp / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / sp / f.parent.name / f.name)
    return _train(root, w)


def _run_copy(w: Path, run: Path, edit: Callable[[Path], None]) -> Path:
    dst = w / "run"
    shutil.copytree(run, dst)
    edit(dst)
    return dst


def _unseen_class(w, t, r):
    root = _with(t, w)
    (root / "suspect").mkdir()
    shutil.copy(sorted((root / "normal").glob("*.png"))[0], root / "suspect" / "x.png")
    return ["evaluate", r, root]


def _edit_dcm(tiny: Path, pixels=None, **tags):
    """A tiny DICOM rewritten as uncompressed 16-bit grey (MONOCHROME2 unless `tags` say
    otherwise), `pixels(grey uint16 array)` → the stored array, then `tags` applied."""
    def make(p: Path) -> None:
        import pydicom
        from pydicom.uid import ExplicitVRLittleEndian

        ds = pydicom.dcmread(_dcm(tiny))
        arr = ds.pixel_array
        grey = (arr.mean(-1) if arr.ndim == 3 else arr).astype("uint16") * 16  # 12-bit values
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        for k in ("PlanarConfiguration", "LossyImageCompression"):
            if k in ds:
                delattr(ds, k)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        out = pixels(grey) if pixels else grey
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.PixelData = out.tobytes()
        ds.save_as(p)
    return make


def _multipage_tiff(p: Path) -> None:
    pages = [Image.new("L", (32, 32), v) for v in (10, 120, 240)]
    pages[0].save(p, save_all=True, append_images=pages[1:])


def _missing_decoder(mp, w) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless

    decoder = get_decoder(JPEG2000Lossless)
    mp.setattr(decoder, "_available", {})
    mp.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0")})


def _j2k(p: Path) -> None:
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("MR_small_jp2klossless.dcm"), p)


def _mixed_frames(w, t, r):
    root = _with(t, w, "dicom", files={"normal/cine.dcm": _multiframe})
    return _train(root, w, "--frame", "3")  # frame 3 of the cine loop; the others' only frame


def _disk_full(mp, w) -> None:
    import errno

    from nfx.train import checkpoint

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(w / "runs" / "x" / "checkpoints" / "last.pt"))
    mp.setattr(checkpoint, "save_state_dict", full)


def _read_only(mp, w) -> None:
    import errno

    from nfx import runs

    real = runs.atomic_write_csv

    def ro(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    mp.setattr(runs, "atomic_write_csv", ro)
    return real


def _twice(w, t, r):
    argv = _train(t / "png", w, "--name", "same")
    code, _, err = cli(*argv)
    assert code == 0, err[-2000:]
    return argv


def _corrupt_cache(w, t, r):
    argv = _train(t / "png", w, "--cache-dir", w / "cache")
    assert cli(*argv)[0] == 0
    entries = sorted((w / "cache").rglob("*.npy"))
    for e in entries[:5]:
        e.write_bytes(e.read_bytes()[:100])  # truncated entries: rebuilt, not refused
    return _train(t / "png", w, "--cache-dir", w / "cache", "--name", "again")


def _symlink(target: str):
    def make(p: Path) -> None:
        os.symlink(p.parent / target, p)
    return make


CASES = [
    # ---- files inside the data folder (finetune; --skip-bad records them instead) ----
    Case("zero-byte PNG", "finetune", lambda w, t, r: _train(_with(t, w, files={"normal/empty.png": b""}), w),
         "error", ("empty.png", "--skip-bad")),
    Case("zero-byte PNG with --skip-bad", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"normal/empty.png": b""}), w, "--skip-bad"), "skip", ("empty.png",)),
    Case("truncated PNG", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"normal/cut.png": _png_bytes(t)[:200]}), w), "error", ("cut.png",)),
    Case("truncated JPEG", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"normal/cut.jpg": (lambda p: (
             Image.open(io.BytesIO(_png_bytes(t))).convert("RGB").save(p, quality=90),
             p.write_bytes(p.read_bytes()[:300])))}), w), "error", ("cut.jpg",)),
    Case("truncated DICOM", "finetune",
         lambda w, t, r: _train(_with(t, w, "dicom", files={"normal/cut.dcm": _dcm(t).read_bytes()[:700]}), w),
         "error", ("cut.dcm",)),
    Case("text named .png", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"normal/notes.png": b"just some text\n" * 20}), w),
         "error", ("notes.png", "not a readable image")),
    Case("PNG named .jpg (decoded by content)", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"normal/really_png.jpg": _png_bytes(t)}), w), "ok"),
    Case("corrupt DICOM header", "finetune",
         lambda w, t, r: _train(_with(t, w, "dicom", files={"normal/bad.dcm": b"\0" * 128 + b"DICM" + os.urandom(300)}),
                                w), "error", ("bad.dcm",)),
    Case("DICOM without pixel data (SR)", "finetune",
         lambda w, t, r: _train(_with(t, w, "dicom", files={"normal/report.dcm": _sr}), w), "error",
         ("report.dcm", "pixel data")),
    Case("multi-frame DICOM without --frame", "finetune",
         lambda w, t, r: _train(_with(t, w, "dicom", files={"normal/cine.dcm": _multiframe}), w), "error",
         ("cine.dcm", "--frame")),
    Case("1×1 px image", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"normal/dot.png": lambda p: Image.new("L", (1, 1), 128).save(p)}),
                                w), "ok"),
    Case("decompression bomb (40000² PNG header)", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"normal/bomb.png": _bomb}), w), "error", ("bomb.png", "bomb")),
    Case("NaN pixel in a float TIFF", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"normal/nan.tif": _nan_tiff}), w), "error", ("nan.tif", "NaN")),
    Case("grey / RGBA / palette / 16-bit PNGs mixed", "finetune", lambda w, t, r: _train_mixed(w, t), "ok"),
    Case("hidden files (.DS_Store, ._x.png)", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"normal/.DS_Store": b"\0\1", "normal/._x.png": b"\0\1"}), w), "ok"),
    Case("unicode file name", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"normal/Größe_眼底.png": _png_bytes(t)}), w), "ok"),
    Case("symlink loop", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"normal/loop": _symlink(".")}), w), "error", ("loop", "loop")),
    Case("dangling symlink", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"normal/gone.png": _symlink("missing.png")}), w), "error",
         ("gone.png", "broken symbolic link")),
    Case("image beside the class folders", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"loose.png": _png_bytes(t)}), w), "error",
         ("loose.png", "label sub-folder")),
    Case("empty class folder", "finetune", lambda w, t, r: _train(_with(t, w, files={"suspect/.keep": b""}), w),
         "error", ("suspect", "empty class folder")),
    Case("one class", "finetune", lambda w, t, r: _train(_one_class(w, t), w), "error", ("class",)),
    Case("class with one image", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"suspect/one.png": _noise_png()}), w), "error",
         ("'suspect' has 1 image",)),
    Case("train/ lacking a class valid/ has", "finetune", _split_lacking_class, "error",
         ("no training images",)),
    Case("valid/ lacking a class train/ has", "finetune", _valid_lacking_class, "error", ("no validation images",)),
    Case("inspect a folder with a truncated DICOM and a text file", "inspect",
         lambda w, t, r: ["inspect", _with(t, w, "dicom", files={"normal/cut.dcm": _dcm(t).read_bytes()[:700],
                                                                 "normal/notes.txt": b"hi"})], "ok",
         ("cannot be used",)),
    Case("inspect a missing folder", "inspect", lambda w, t, r: ["inspect", w / "nope"], "error", ("nope",)),
    Case("labels CSV without a label column", "finetune",
         lambda w, t, r: _train(_with(t, w), w, "--labels", _csv_from_folders(w / "data", header="path,diagnosis_x")),
         "error", ("labels.csv",)),
    Case("labels CSV with an unknown path", "finetune",
         lambda w, t, r: _train(_with(t, w), w, "--labels", _csv_from_folders(w / "data", "normal/nope.png,normal\n")),
         "error", ("nope.png", "not found")),
    Case("labels CSV with a duplicate row", "finetune",
         lambda w, t, r: _train(_with(t, w), w, "--labels", _csv_from_folders(
             w / "data", f"{sorted((w / 'data' / 'normal').glob('*.png'))[0].relative_to(w / 'data')},normal\n")),
         "error", ("listed twice",)),
    # ---- options ----
    Case("--bs 0", "finetune", lambda w, t, r: _train(t / "png", w, "--bs", "0"), "error", ("--bs",)),
    Case("--bs abc", "finetune", lambda w, t, r: _train(t / "png", w, "--bs", "abc"), "error", ("--bs", "--help")),
    Case("--lr nan", "finetune", lambda w, t, r: _train(t / "png", w, "--lr", "nan"), "error", ("--lr",)),
    Case("--lr inf", "finetune", lambda w, t, r: _train(t / "png", w, "--lr", "inf"), "error", ("--lr",)),
    Case("--valid-pct 1.5", "finetune", lambda w, t, r: _train(t / "png", w, "--valid-pct", "1.5"), "error",
         ("--valid-pct",)),
    Case("--size 7", "finetune", lambda w, t, r: _train(t / "png", w, "--size", "7"), "error", ("--size",)),
    Case("--accum 0", "finetune", lambda w, t, r: _train(t / "png", w, "--accum", "0"), "error", ("--accum",)),
    Case("--workers -1", "finetune", lambda w, t, r: _train(t / "png", w, "--workers", "-1"), "error",
         ("--workers",)),
    Case("unknown --arch", "finetune", lambda w, t, r: _train(t / "png", w, "--arch", "nfnet_zz9"), "error",
         ("nfnet_zz9",)),
    Case("--monitor unknown metric", "finetune", lambda w, t, r: _train(t / "png", w, "--monitor", "valid_f7"),
         "error", ("--monitor",)),
    Case("--config with bad JSON", "finetune",
         lambda w, t, r: ["finetune", "--config", (lambda p: (p.write_text("{not json"), p)[1])(w / "c.json")],
         "error", ("c.json",)),
    Case("--config with an unknown key", "finetune",
         lambda w, t, r: ["finetune", "--config", (lambda p: (p.write_text(json.dumps(
             {"train": {"epochz": 3}})), p)[1])(w / "c.json")], "error", ("epochz",)),
    # ---- run folders ----
    Case("missing model.safetensors", "evaluate",
         lambda w, t, r: ["evaluate", _run_copy(w, r, lambda d: (d / "model.safetensors").unlink())], "error",
         ("model.safetensors",)),
    Case("truncated model.safetensors", "evaluate",
         lambda w, t, r: ["evaluate", _run_copy(w, r, lambda d: (d / "model.safetensors").write_bytes(
             (d / "model.safetensors").read_bytes()[:500]))], "error", ("model.safetensors",)),
    Case("random bytes as model.safetensors", "export",
         lambda w, t, r: ["export", _run_copy(w, r, lambda d: (d / "model.safetensors").write_bytes(os.urandom(4096)))],
         "error", ("model.safetensors",)),
    Case("corrupt config.json", "evaluate",
         lambda w, t, r: ["evaluate", _run_copy(w, r, lambda d: (d / "config.json").write_text("{\"data\": "))],
         "error", ("config.json",)),
    Case("corrupt model.json", "predict",
         lambda w, t, r: ["predict", _run_copy(w, r, lambda d: ((d / "model.json").write_text("[1, 2"),
                                                                (d / "model.onnx").unlink(missing_ok=True))),
                          t / "png" / "normal"], "error", ("model.json",)),
    Case("run killed before its first epoch (resume)", "finetune",
         lambda w, t, r: ["finetune", "--resume", _run_copy(w, r, lambda d: shutil.rmtree(d / "checkpoints"))],
         "error", ("no checkpoint",)),
    Case("evaluate on data with a class the model never saw", "evaluate", _unseen_class, "error", ("suspect",)),
    Case("predict where every image is unreadable", "predict",
         lambda w, t, r: ["predict", r, (lambda p: (p.write_bytes(b"nope"), p)[1])(w / "x.png")], "error",
         ("none of the 1 image",)),
    Case("predict a folder with a bad file", "predict",
         lambda w, t, r: ["predict", r, _with(t, w, files={"normal/notes.txt": b"hi"})], "ok", ("notes.txt",)),
    Case("explain a missing file", "explain", lambda w, t, r: ["explain", r, w / "nope.png"], "error", ("nope.png",)),
    # ---- added: DICOM kinds, odd names, more options and run folders, simulated faults ----
    Case("DICOMDIR in the data folder", "finetune",
         lambda w, t, r: _train(_with(t, w, "dicom", files={"normal/DICOMDIR": lambda p: shutil.copy(
             __import__("pydicom.data", fromlist=["x"]).get_testdata_file("DICOMDIR"), p)}), w), "ok", ("DICOMDIR",)),
    Case("compressed DICOM whose decoder is missing (simulated)", "finetune",
         lambda w, t, r: _train(_with(t, w, "dicom", files={"normal/j2k.dcm": _j2k}), w), "error",
         ("j2k.dcm", "pip install pylibjpeg"), setup=_missing_decoder),
    Case("BitsStored 12 with garbage in the unused high bits", "finetune",
         lambda w, t, r: _train(_with(t, w, "dicom", files={"normal/odd.dcm": _edit_dcm(
             t, BitsStored=12, HighBit=11, pixels=lambda a: a | 0xF000)}), w), "ok"),
    Case("signed 16-bit DICOM", "finetune",
         lambda w, t, r: _train(_with(t, w, "dicom", files={"normal/signed.dcm": _edit_dcm(
             t, PixelRepresentation=1, pixels=lambda a: (a.astype("int32") - 2000).astype("int16"))}), w), "ok"),
    Case("MONOCHROME1 DICOM", "finetune",
         lambda w, t, r: _train(_with(t, w, "dicom", files={"normal/mono1.dcm": _edit_dcm(
             t, PhotometricInterpretation="MONOCHROME1")}), w), "ok"),
    Case("non-UTF-8 file name", "finetune",
         lambda w, t, r: _train(_with(t, w, files={"normal/" + b"caf\xe9.png".decode("utf-8", "surrogateescape"):
                                                    _png_bytes(t)}), w), "ok"),
    Case("multi-page TIFF", "finetune", lambda w, t, r: _train(_with(t, w, files={"normal/stack.tif": _multipage_tiff}), w),
         "error", ("stack.tif", "3 pages")),
    Case("--frame N with single-frame files in the series", "finetune", _mixed_frames, "ok", ("--frame",)),
    Case("labels CSV that disagrees with the folders", "finetune",
         lambda w, t, r: _train(_with(t, w), w, "--labels", _relabel_one(w / "data")), "ok", ("labels.csv", "folder")),
    Case("--size 1000000", "finetune", lambda w, t, r: _train(t / "png", w, "--size", "1000000"), "error", ("--size",)),
    Case("--config that is not an object", "finetune",
         lambda w, t, r: ["finetune", "--config", (lambda p: (p.write_text("[1, 2]"), p)[1])(w / "c.json")],
         "error", ("c.json", "object")),
    Case("--config value of the wrong type", "finetune",
         lambda w, t, r: ["finetune", "--config", (lambda p: (p.write_text(json.dumps(
             {"train": {"bs": "eight"}})), p)[1])(w / "c.json")], "error", ("c.json", "bs", "expected int")),
    Case("--out that is a file", "finetune",
         lambda w, t, r: ["finetune", t / "png", "--arch", "test_nfnet", "--no-pretrained", "--size", "32",
                          "--out", (lambda p: (p.write_text("x"), p)[1])(w / "runs.txt")], "error", ("runs.txt",)),
    Case("two runs with the same --name", "finetune", _twice, "error", ("same", "--name")),
    Case("corrupt decoded-image cache entries (rebuilt)", "finetune", _corrupt_cache, "ok"),
    Case("--lr 1e30 (training diverges to NaN)", "finetune",
         lambda w, t, r: _train(t / "png", w, "--lr", "1e30", "--agc", "off"), "error", ("--lr",)),
    Case("disk full while writing a checkpoint (simulated ENOSPC)", "finetune",
         lambda w, t, r: _train(t / "png", w), "error", ("No space left", "free space"), setup=_disk_full),
    Case("read-only output folder (simulated EROFS)", "finetune",
         lambda w, t, r: _train(t / "png", w), "error", ("Read-only", "writable --out"), setup=_read_only),
    Case("corrupt model.onnx", "predict",
         lambda w, t, r: ["predict", _corrupt_onnx(w, r), t / "png" / "normal", "--backend", "onnx"],
         "error", ("model.onnx",)),
    Case("truncated checkpoints/last.pt (resume)", "finetune",
         lambda w, t, r: ["finetune", "--resume", _run_copy(w, r, lambda d: (d / "checkpoints" / "last.pt").write_bytes(
             (d / "checkpoints" / "last.pt").read_bytes()[:1000]))], "error", ("last.pt",)),
    Case("splits.csv missing", "evaluate",
         lambda w, t, r: ["evaluate", _run_copy(w, r, lambda d: (d / "splits.csv").unlink())], "error", ("splits.csv",)),
]


def _relabel_one(root: Path) -> Path:
    """A labels CSV that agrees with the folders except for one normal/ file labelled glaucoma."""
    files = sorted(root.rglob("*.png"))
    odd = next(p for p in files if p.parent.name == "normal")
    rows = [f"{p.relative_to(root)},{'glaucoma' if p == odd else p.parent.name}" for p in files]
    return _csv(root, "path,label\n" + "\n".join(rows) + "\n")


def _corrupt_onnx(w: Path, r: Path) -> Path:
    d = _run_copy(w, r, lambda d: None)
    assert cli("export", d)[0] == 0
    (d / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")
    return d


def _train_mixed(w: Path, t: Path) -> list:
    root = _with(t, w)
    _mixed_modes(root)
    return _train(root, w)


def _one_class(w: Path, t: Path) -> Path:
    root = w / "data"
    shutil.copytree(t / "png" / "normal", root / "normal")
    return root


@pytest.fixture(scope="module", autouse=True)
def _write_doc():
    yield
    if os.environ.get("NFX_RELIABILITY_DOC") and len(RESULTS) == len(CASES):
        lines = ["# Reliability: bad inputs → outcomes", "",
                 "Generated by `NFX_RELIABILITY_DOC=1 pytest tests/test_corpus.py` (each case is a test; CI runs "
                 "them all). Expected: `error` = exit code 1, one `error:` line naming the file/option and the "
                 "fix, no traceback; `skip` = exit 0 with the file recorded in bad_files.csv; `ok` = exit 0.", "",
                 f"{len(CASES)} cases, all passing.", "",
                 "| input | verb | expected | what nfx says |", "|---|---|---|---|"]
        for name, verb, expected, said in RESULTS:
            lines.append(f"| {name} | {verb} | {expected} | {said.replace('|', '∣')} |")
        (ROOT / "docs" / "RELIABILITY.md").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus(case: Case, tiny_data, tiny_run, tmp_path, monkeypatch):
    argv = case.build(tmp_path, tiny_data, tiny_run.run_dir)
    if case.setup:
        case.setup(monkeypatch, tmp_path)
    code, out, err = cli(*argv)
    assert "Traceback" not in err, err
    import re

    assert not re.search(r"\w+Warning:|^ERROR|^WARNING", err, re.M), err[-2000:]  # no library chatter
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    if case.expect == "error":
        assert code == 1, (code, err[-2000:])
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], err[-2000:]
        said = errors[0]
    else:
        assert code == 0, (code, err[-2000:])
        if case.expect == "skip":
            bad = next((tmp_path / "runs").glob("*/bad_files.csv")).read_text()
            assert all(n in bad for n in case.needles), bad
            said = "skipped, recorded in bad_files.csv: " + bad.splitlines()[1]
        else:
            said = next((ln for ln in lines if ln.startswith(("warning:", "note:")) and any(n in ln for n in case.needles)),
                        "runs clean")
    assert "internal error" not in said, said  # every failure here is a known one: a clear message
    for n in case.needles:
        assert n in said, (n, said)
    import re

    shown = re.sub(r"runs/test_nfnet-\d+-\d+/", "runs/<run>/", said.replace(f"{tmp_path}/", ""))
    shown = re.sub(r"/tmp/pytest-of-[^\s)]*", "<tmp>", shown)  # a path cut short inside a library's message
    RESULTS.append((case.name, case.verb, case.expect, shown[:300]))


# ---- faults the bad-input corpus found (issue: five faults) --------------------------------------

def test_damaged_cache_entries_of_the_same_size_are_rebuilt_never_unpickled(tiny_data, tmp_path):
    """Random bytes of the same size over every cache entry: a miss, decoded again, replaced."""
    argv = _train(tiny_data / "png", tmp_path, "--cache-dir", tmp_path / "cache")
    assert cli(*argv)[0] == 0
    rng = np.random.default_rng(0)
    entries = [e for e in sorted((tmp_path / "cache").rglob("*.npy")) if ".sig" not in e.name]
    assert entries
    for e in entries:
        e.write_bytes(rng.integers(0, 256, e.stat().st_size, dtype=np.uint8).tobytes())
    code, out, err = cli(*_train(tiny_data / "png", tmp_path, "--cache-dir", tmp_path / "cache", "--name", "again"))
    assert code == 0, err[-2000:]
    assert "internal error" not in err and "pickled" not in err
    for e in entries:
        assert np.load(e, allow_pickle=False).dtype == np.float16


def test_inspect_and_finetune_agree_about_a_nan_decoding_dicom(tiny_data, tmp_path):
    import warnings

    import pydicom
    from pydicom.data import get_testdata_file

    root = _with(tiny_data, tmp_path, "png")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope = "1e308"  # decodes to inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(root / "normal" / "huge_slope.dcm")
    code, out, err = cli("inspect", root, "--json")
    report = json.loads(out)
    assert [b["path"] for b in report["bad_files"]] == [str(root / "normal" / "huge_slope.dcm")]
    assert "not finite" in report["bad_files"][0]["reason"]
    code, _, err = cli(*_train(root, tmp_path))
    assert code == 1 and "huge_slope.dcm" in err and "not finite" in (tmp_path / "runs").joinpath(
        next((tmp_path / "runs").iterdir()).name, "bad_files.csv").read_text()


def test_a_patient_leak_names_one_file_on_each_side():
    from nfx.data.split import check_no_leaks, group_keys
    from nfx.errors import DataError

    paths = ["train/a.dcm", "train/b.dcm", "valid/c.dcm", "valid/d.dcm"]
    groups = group_keys(paths, ["anon-1ee408b82d86", "anon-2", "anon-1ee408b82d86", "anon-3"])
    with pytest.raises(DataError) as e:
        check_no_leaks(groups, ["train", "train", "valid", "valid"], paths=paths)
    msg = str(e.value)
    assert "anon-1ee408b82d86: train train/a.dcm vs valid valid/c.dcm" in msg and "--allow-patient-leak" in msg


def test_a_symlink_back_into_the_data_folder_is_reported_and_not_followed(tiny_data, tmp_path):
    root = _with(tiny_data, tmp_path, "png")
    os.symlink("..", root / "glaucoma" / "loop")
    n = {c: len(list((root / c).glob("*.png"))) for c in ("glaucoma", "normal")}
    code, out, err = cli("inspect", root, "--json")
    report = json.loads(out)
    assert {c: v["images"] for c, v in report["classes"].items()} == n
    assert [b["path"] for b in report["bad_files"]] == [str(root / "glaucoma" / "loop")]
    assert "symbolic link back into the data folder" in report["bad_files"][0]["reason"]
    assert not any("identical files carry different labels" in w for w in report["warnings"])


def test_frame_n_on_a_series_mixing_single_and_multi_frame_files_is_one_rule_everywhere(tiny_data, tmp_path):
    """--frame 3 with a 10-frame cine loop among single-frame files: finetune trains on all of
    them (the others give their only frame, one note line); evaluate, the ONNX metadata and
    predict (ONNX Runtime and torch) apply the same rule to the same files."""
    root = _with(tiny_data, tmp_path, "dicom", files={"normal/cine.dcm": _multiframe})
    code, out, err = cli(*_train(root, tmp_path, "--frame", "3", "--name", "mixed", "--allow-duplicate-leak"))
    assert code == 0, err[-2000:]
    assert "does not apply, its only frame was used" in err + out and "out of range" not in err + out
    run = tmp_path / "runs" / "mixed"
    assert not (run / "bad_files.csv").exists() or "cine.dcm" not in (run / "bad_files.csv").read_text()
    code, out, err = cli("evaluate", run, "--json")
    assert code == 0, err[-2000:]
    assert cli("export", run, "--onnx")[0] == 0
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
    assert meta["nfx_frame"] == "3"
    single = sorted((root / "glaucoma").glob("*.dcm"))[0]
    rows = {}
    for backend in ("onnx", "torch"):
        code, out, err = cli("predict", run, single, root / "normal" / "cine.dcm", "--backend", backend, "--json")
        assert code == 0, err[-2000:]
        rows[backend] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert len(rows[backend]) == 2 and not any(r.get("error") for r in rows[backend]), rows[backend]
    for a, b in zip(rows["onnx"], rows["torch"]):
        assert a["file"] == b["file"] and a["engine"] == "onnxruntime" and b["engine"] == "torch"
        for c in a["probabilities"]:
            assert abs(a["probabilities"][c] - b["probabilities"][c]) < 1e-3, (a, b)
