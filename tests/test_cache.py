"""The decoded-image cache (keys, invalidation, pools, frames) and the finetune ingest step's bad-file handling."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from nfx.config import DataConfig, RunConfig
from nfx.console import Printer
from nfx.data.cache import ImageCache
from nfx.data.discover import discover
from nfx.errors import DataError
from nfx.workflows.finetune import ingest

SIZE = 64


@pytest.fixture()
def pngs(tiny_data, tmp_path):
    root = tmp_path / "png"
    shutil.copytree(tiny_data / "png", root)
    return sorted(str(p) for p in root.rglob("*.png"))


def test_fill_then_all_hits(pngs, tmp_path):
    cache = ImageCache(tmp_path / "c", SIZE, resize="letterbox")
    filled = cache.fill(pngs[:6], workers=2, pool="thread")
    entries, bad = filled
    assert not bad and all(e is not None and e.is_file() for e in entries)
    assert filled.stats["decoded"] == 6 and filled.stats["hits"] == 0
    arr = np.load(entries[0])
    assert arr.shape == (SIZE, SIZE, 3) and arr.dtype == np.float16
    assert 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0
    filled = cache.fill(pngs[:6], workers=2)
    assert filled.entries == entries
    assert filled.stats["hits"] == 6 and filled.stats["decoded"] == 0


def test_changed_file_or_setting_is_a_miss(pngs, tmp_path):
    cache = ImageCache(tmp_path / "c", SIZE, resize="letterbox")
    p = pngs[0]
    k = cache.key(p)
    assert ImageCache(tmp_path / "c", SIZE + 32, resize="letterbox").key(p) != k  # input size
    assert ImageCache(tmp_path / "c", SIZE, frame=0, resize="letterbox").key(p) != k  # DICOM frame
    cache.fill([p], workers=1)
    shutil.copy(pngs[1], p)  # new content
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache.key(p) != k
    assert cache.fill([p], workers=1).stats["decoded"] == 1


def test_damaged_entry_is_rebuilt(pngs, tmp_path):
    cache = ImageCache(tmp_path / "c", SIZE, resize="letterbox")
    (e,), _ = cache.fill(pngs[:1], workers=1)
    good = np.load(e)
    e.write_bytes(e.read_bytes()[:100])  # e.g. a disk that filled up
    filled = cache.fill(pngs[:1], workers=1)
    (e2,), bad = filled
    assert not bad and filled.stats["decoded"] == 1
    assert np.array_equal(np.load(e2), good)


def test_process_and_thread_pools_agree_and_report_every_bad_file(pngs, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    multi = get_testdata_file("emri_small.dcm")  # 10 frames
    paths = pngs[:4] + [str(broken), multi]
    out = {}
    for pool in ("thread", "process"):
        cache = ImageCache(tmp_path / pool, SIZE, resize="letterbox")
        filled = cache.fill(paths, workers=2, pool=pool)
        entries, bad = filled
        assert filled.stats["pool"] == pool
        assert [p for p, _ in bad] == sorted([str(broken), multi])
        reasons = dict(bad)
        assert "--frame" in reasons[multi]
        assert "corrupt" in reasons[str(broken)] or "readable" in reasons[str(broken)]
        out[pool] = [np.load(e) for e in entries[:4]]
    for a, b in zip(out["thread"], out["process"], strict=True):
        assert np.array_equal(a, b)


def test_frame_reaches_the_decoder(tmp_path):
    multi = get_testdata_file("emri_small.dcm")
    _, bad = ImageCache(tmp_path, SIZE, resize="letterbox").fill([multi], workers=1)
    assert bad
    c0, c5 = ImageCache(tmp_path, SIZE, frame=0, resize="letterbox"), ImageCache(tmp_path, SIZE, frame=5, resize="letterbox")
    (e0,), bad0 = c0.fill([multi], workers=1)
    (e5,), bad5 = c5.fill([multi], workers=1)
    assert not bad0 and not bad5 and e0 != e5
    assert not np.array_equal(np.load(e0), np.load(e5))


# ---------------------------------------------------------------------------------------------
# nfx.workflows.finetune.ingest
# ---------------------------------------------------------------------------------------------
def _bad_folder(tiny_data, tmp_path) -> Path:
    root = tmp_path / "d"
    shutil.copytree(tiny_data / "dicom", root)
    (root / "normal" / "notes.txt").write_text("x")  # unsupported
    (root / "normal" / "header.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)  # header unreadable
    shutil.copy(get_testdata_file("emri_small.dcm"), root / "glaucoma" / "multi.dcm")  # needs --frame
    trunc = next((root / "glaucoma").glob("*.dcm"))
    trunc.write_bytes(trunc.read_bytes()[:-300])  # pixel data cut short: a decode failure
    return root


def _bad_rows(run_dir: Path) -> dict[str, str]:
    with open(run_dir / "bad_files.csv", newline="") as f:
        return {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}


def test_ingest_stops_with_one_message_pointing_at_bad_files_csv(tiny_data, tmp_path):
    root = _bad_folder(tiny_data, tmp_path)
    cfg = RunConfig(data=DataConfig(path=str(root), size=SIZE, cache_dir=str(tmp_path / "c")))
    disc = discover(root)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(DataError) as err:
        ingest(cfg, disc, run_dir, Printer(quiet=True))
    msg = str(err.value)
    assert "4 file(s)" in msg and "bad_files.csv" in msg and "--skip-bad" in msg and "\n" not in msg
    rows = _bad_rows(run_dir)
    assert set(rows) == {"notes.txt", "header.dcm", "multi.dcm", next(iter(
        n for n in rows if n.startswith("SYN")))}
    assert "unsupported" in rows["notes.txt"]
    assert "--frame" in rows["multi.dcm"]


def test_ingest_skip_bad_continues_and_records(tiny_data, tmp_path):
    root = _bad_folder(tiny_data, tmp_path)
    cfg = RunConfig(data=DataConfig(path=str(root), size=SIZE, cache_dir=str(tmp_path / "c"), skip_bad=True))
    disc = discover(root)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    p = Printer(quiet=True)
    samples, entries = ingest(cfg, disc, run_dir, p)
    assert len(samples) == len(entries) == 23 and all(e.is_file() for e in entries)
    assert len(_bad_rows(run_dir)) == 4
    assert any("skipping 4" in w for w in p.warnings)
    # with --frame the multi-frame file is used, and the other three stay bad
    cfg2 = RunConfig(data=DataConfig(path=str(root), size=SIZE, cache_dir=str(tmp_path / "c"), skip_bad=True,
                                     frame=0))
    samples2, _ = ingest(cfg2, disc, run_dir, p)
    assert len(samples2) == 24 and "multi.dcm" not in _bad_rows(run_dir)


@pytest.mark.parametrize("code", [28, 30])  # ENOSPC, EROFS
def test_a_full_or_read_only_cache_disk_is_a_machine_error_not_bad_files(pngs, tmp_path, monkeypatch, code):
    import errno

    from nfx.errors import MachineError

    def full(self, e, arr):  # the disk fills up on the first write
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(ImageCache, "_store", full)
    cache = ImageCache(tmp_path / "cache", 32, resize="squish")
    with pytest.raises(MachineError, match=rf"cache {tmp_path / 'cache'}: {os.strerror(code)}.*NFX_CACHE_DIR"):
        cache.fill([str(p) for p in pngs], workers=2, pool="thread")
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    # an ordinary unreadable image still is a bad file (the two are told apart by errno)
    monkeypatch.setattr(ImageCache, "_store", lambda self, e, arr: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    entries, bad = cache.fill([str(pngs[0])], workers=1, pool="thread")
    assert entries == [None] and len(bad) == 1
