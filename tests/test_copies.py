"""Copies of one image: signatures, grouping, splits that never straddle a copy group, refusals
for copies across user splits and labels, the layout warning, evaluate on data holding training
images. Real files: pydicom's CT/MR test images and the synthetic fundus photos."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from nfx.data import copies
from nfx.data.cache import input_and_signature
from nfx.data.images import decode_file


def _png(a: np.ndarray, p: Path, bits: int = 8) -> Path:
    from PIL import Image

    a = a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a
    if bits == 16:
        g = a.mean(axis=2) if a.ndim == 3 else a
        Image.fromarray((g * 65535).round().astype(np.uint16)).save(p)
    else:
        Image.fromarray((a * 255).round().astype(np.uint8)).save(p)
    return p


def _jpeg(a: np.ndarray, p: Path, q: int) -> Path:
    from PIL import Image

    a = a[..., 0] if a.shape[2] == 1 else a
    Image.fromarray((a * 255).round().astype(np.uint8)).save(p, quality=q)
    return p


def _resized(a: np.ndarray, f: float) -> np.ndarray:
    import cv2

    h, w = a.shape[:2]
    out = cv2.resize(a, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    return np.clip(out if out.ndim == 3 else out[..., None], 0, 1)


def _rle_dicom(a: np.ndarray, p: Path) -> Path:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    raw = (a.mean(axis=2) * 4095).round().astype(np.uint16)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 1900, 3600  # another window: clips a little at both ends
    ds.PixelData = raw.tobytes()
    ds.compress(RLELossless, raw)
    ds.save_as(p, enforce_file_format=True)
    return p


TRANSFORMS = {
    "resize 0.5x": lambda a, d: _png(_resized(a, 0.5), d / "half.png"),
    "resize 2x": lambda a, d: _png(_resized(a, 2.0), d / "double.png"),
    "jpeg q70": lambda a, d: _jpeg(a, d / "q70.jpg", 70),
    "16-bit png": lambda a, d: _png(a, d / "deep.png", bits=16),
    "window": lambda a, d: _png(np.clip((a - 0.05) / 0.85, 0, 1), d / "window.png"),
    "crop 2 px": lambda a, d: _png(a[2:, 2:], d / "crop.png"),
    "rotate 90": lambda a, d: _png(np.ascontiguousarray(np.rot90(a)), d / "r90.png"),
    "rotate 180": lambda a, d: _png(np.ascontiguousarray(np.rot90(a, 2)), d / "r180.png"),
    "mirror": lambda a, d: _png(np.ascontiguousarray(a[:, ::-1]), d / "mirror.png"),
    "dicom rle + window": lambda a, d: _rle_dicom(a, d / "rle.dcm"),
}


def _bases() -> dict[str, np.ndarray]:
    from nfx.data.synthetic import generate  # noqa: F401  (sample photos come from sample_data)

    root = Path(__file__).resolve().parents[1] / "sample_data" / "png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "CT": decode_file(Path(get_testdata_file("CT_small.dcm")), voi="minmax"),
            "MR": decode_file(Path(get_testdata_file("MR_small.dcm")), voi="minmax"),
            "fundus": decode_file(sorted((root / "glaucoma").glob("*.png"))[0]),
        }


# how a signature is made: from the decoded image (inspect, the fastai splitter without a cache) or
# at ingest from the model input the cache makes (size, resize policy), as nfx finetune does
SIG_PATHS = {
    "decoded": copies.signature,
    "ingest 224 squish": lambda img: input_and_signature(img, 224, "squish")[1],
    "ingest 96 letterbox": lambda img: input_and_signature(img, 96, "letterbox")[1],
    "ingest 64 squish": lambda img: input_and_signature(img, 64, "squish")[1],
    "ingest 96 crop": lambda img: input_and_signature(img, 96, "crop")[1],  # falls back to the decoded image
}


@pytest.mark.parametrize("how", sorted(SIG_PATHS))
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_every_transformation_of_a_real_image_is_a_copy(name, how, tmp_path):
    sig = SIG_PATHS[how]
    for base, img in _bases().items():
        d = tmp_path / base
        d.mkdir()
        copy = decode_file(TRANSFORMS[name](img, d), voi="minmax")
        c = copies.correlation(sig(img), sig(copy))
        assert c >= copies.THRESHOLD, f"{base} / {name} ({how}): correlation {c:.3f}"


def test_ingest_signature_is_the_decoded_images_measure():
    """At ingest the signature comes from the model input (one area reduction, no pass over the
    full-size image); it is the same measure as the decoded image's, so signatures made either way
    may be compared. Where the input lacks the whole picture (crop policy) or is under 64 px, the
    decoded image is used."""
    for base, img in _bases().items():
        ref = copies.signature(img)
        for size, policy in [(224, "squish"), (96, "letterbox"), (64, "squish"), (224, "letterbox")]:
            x, sig = input_and_signature(img, size, policy)
            assert x.shape == (size, size, 3)
            (a, b), ok = copies.unit_vectors(np.stack([ref, sig]))
            assert ok.all() and float((a * b).sum()) >= 0.99, (base, size, policy)
        for size, policy in [(96, "crop"), (48, "squish")]:
            x, _ = input_and_signature(img, size, policy)
            assert copies.signature_of_input(x, policy, img.shape[:2]) is None
            np.testing.assert_array_equal(input_and_signature(img, size, policy)[1], ref)
    wide = np.zeros((60, 200, 3), np.float32)
    wide[:, :100] = 1.0  # letterbox: the signature sees the picture's box, not the padding
    x = input_and_signature(wide, 224, "letterbox")[0]  # the picture's box: 224 x 67 px
    squished = input_and_signature(wide, 224, "squish")[1]
    assert copies.correlation(copies.signature_of_input(x, "letterbox", wide.shape[:2]), squished) > 0.99


@pytest.mark.parametrize("how", ["decoded", "ingest 224 squish"])
def test_distinct_images_and_neighbouring_slices_stay_apart(how):
    sig = SIG_PATHS[how]
    bases = _bases()
    root = Path(__file__).resolve().parents[1] / "sample_data" / "png"
    photos = [decode_file(p) for p in sorted((root / "normal").glob("*.png"))[:40]]  # the base photo is a glaucoma one
    sigs = [sig(b) for b in bases.values()] + [sig(p) for p in photos]
    g = copies.group_copies(np.stack(sigs))
    assert not g.pairs, g.pairs[:3]  # 43 distinct pictures (CT, MR, 41 fundus photos, both eyes of 20 patients)
    mr = Path(get_testdata_file("emri_small.dcm"))  # 10 neighbouring MR slices of one patient
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = [sig(decode_file(mr, frame=k, voi="minmax")) for k in range(10)]
    assert not copies.group_copies(np.stack(frames)).pairs


def test_groups_join_copies_of_copies_and_both_search_paths_agree(tmp_path):
    bases = _bases()
    sigs, truth = [], []
    for k, (name, img) in enumerate(bases.items()):
        sigs.append(copies.signature(img))
        truth.append(k)
        for t in ("resize 0.5x", "rotate 90", "jpeg q70"):
            d = tmp_path / f"{name}-{t}"
            d.mkdir()
            sigs.append(copies.signature(decode_file(TRANSFORMS[t](img, d), voi="minmax")))
            truth.append(k)
    flat = np.zeros_like(sigs[0])  # a blank image: no contrast, never grouped
    sigs += [flat, flat]
    truth += [98, 99]
    for exact_max in (10_000, 0):  # every pair / multi-index hashing
        g = copies.group_copies(np.stack(sigs), exact_max=exact_max)
        same = g.group[:, None] == g.group[None, :]
        want = np.array(truth)[:, None] == np.array(truth)[None, :]
        assert (same == want).all(), exact_max
        assert g.flat[-2:].all() and not g.flat[:-2].any()


def test_cross_matches_finds_the_training_image_a_query_copies():
    bases = list(_bases().values())
    ref = np.stack([copies.signature(b) for b in bases[:2]])
    q = np.stack([copies.signature(np.ascontiguousarray(bases[1][:, ::-1])), copies.signature(bases[2])])
    assert [(qi, ri) for qi, ri, _ in copies.cross_matches(q, ref)] == [(0, 1)]


# ---- splits ---------------------------------------------------------------------------------------

def test_a_split_never_puts_a_copy_group_or_patient_on_two_sides():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from nfx.data.split import (
        assign_splits,
        copy_straddles,
        find_leaks,
        group_keys,
        merge_copy_groups,
    )

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 12), st.integers(0, 30)), min_size=6, max_size=60),
           st.integers(0, 10_000))
    def prop(rows, seed):
        labels = [f"c{lab}" for lab, _, _ in rows]
        patients = [f"p{p}" if p < 8 else None for _, p, _ in rows]
        first: dict[int, int] = {}
        copy_of = [first.setdefault(c, i) for i, (_, _, c) in enumerate(rows)]
        groups = group_keys([f"f{i}" for i in range(len(rows))], patients)
        splits, _ = assign_splits(labels, groups, [None] * len(rows), 0.3, seed,
                                  split_groups=merge_copy_groups(groups, copy_of))
        assert not copy_straddles(splits, copy_of)
        assert not find_leaks(groups, splits)

    prop()


def _cli(*args):
    from tests.test_corpus import cli

    return cli(*args)


def _train(data, out, *extra):
    return ["finetune", data, "--arch", "test_nfnet", "--no-pretrained", "--size", "32", "--epochs", "1",
            "--bs", "4", "--workers", "0", "--out", out, *extra]


def test_user_splits_with_a_copy_on_both_sides_are_refused_unless_allowed(tiny_data, tmp_path):
    root = tmp_path / "data"
    for sp in ("train", "valid"):
        shutil.copytree(tiny_data / "png", root / sp)
    # keep one image per class per split, except a resized copy of a training image in valid/
    for sp, keep in (("train", slice(0, 8)), ("valid", slice(8, 12))):
        for cls in ("glaucoma", "normal"):
            for p in sorted((root / sp / cls).glob("*.png"))[keep.stop:] + sorted((root / sp / cls).glob("*.png"))[:keep.start]:
                p.unlink()
    src = sorted((root / "train" / "normal").glob("*.png"))[0]
    img = decode_file(src)
    _png(_resized(img, 0.5), root / "valid" / "normal" / "copy_of_train.png")
    code, _, err = _cli(*_train(root, tmp_path / "runs"))
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert "copies of one image sit in different splits" in line and src.name in line and "copy_of_train.png" in line
    assert "--allow-duplicate-leak" in line and "Traceback" not in err
    code, _, err = _cli(*_train(root, tmp_path / "runs", "--allow-duplicate-leak", "--name", "ok"))
    assert code == 0, err[-2000:]
    summary = json.loads((tmp_path / "runs" / "ok" / "split_summary.json").read_text())
    assert summary["allow_duplicate_leak"] is True and summary["copies"]["across_splits"] == 1
    assert "--allow-duplicate-leak" in err and "optimistic" in err
    cfg = json.loads((tmp_path / "runs" / "ok" / "config.json").read_text())
    assert cfg["data"]["allow_duplicate_leak"] is True


def test_format_folders_as_classes_are_a_label_conflict_in_one_line_and_a_layout_warning(tmp_path):
    sample = Path(__file__).resolve().parents[1] / "sample_data"
    code, _, err = _cli(*_train(sample, tmp_path / "runs"))
    assert code == 1 and "Traceback" not in err
    assert "each contain the same label-like folders (glaucoma/, normal/)" in err
    assert f"did you mean {sample / 'dicom'}" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 160 group(s) of copies of one image carry different labels")
    assert "--allow-duplicate-leak" in last


def test_nfx_split_keeps_copies_together_and_records_them(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data / "png", root)
    made = []
    for cls in ("glaucoma", "normal"):
        for k, p in enumerate(sorted((root / cls).glob("*.png"))[:3]):
            q = root / cls / f"resaved_{k}.jpg"
            _jpeg(_resized(decode_file(p), 2.0), q, 80)
            made.append((p, q))
    for seed in range(3):
        code, _, err = _cli(*_train(root, tmp_path / "runs", "--seed", str(seed), "--name", f"s{seed}"))
        assert code == 0, err[-2000:]
        rows = {r.split(",")[0]: r.split(",")[-1] for r in
                (tmp_path / "runs" / f"s{seed}" / "splits.csv").read_text().splitlines()[1:]}
        for p, q in made:
            assert rows[str(p)] == rows[str(q)]
        summary = json.loads((tmp_path / "runs" / f"s{seed}" / "split_summary.json").read_text())
        assert summary["copies"]["groups"] >= 6 and summary["copies"]["across_splits"] == 0


def test_evaluate_on_data_holding_training_images_says_so_and_leaves_them_out(tiny_run, tiny_data, tmp_path):
    from nfx.console import Printer
    from nfx.workflows.evaluate import evaluate

    run = tiny_run.run_dir
    rows = [r.split(",") for r in (run / "splits.csv").read_text().splitlines()[1:]]
    train = [r[0] for r in rows if r[-1] == "train"][:3]
    valid = [(r[0], r[1]) for r in rows if r[-1] == "valid"]
    new = tmp_path / "new"
    for i, src in enumerate(train):  # training images re-saved as PNG under their label
        label = next(r[1] for r in rows if r[0] == src)
        (new / label).mkdir(parents=True, exist_ok=True)
        _png(decode_file(Path(src)), new / label / f"seen_{i}.png")
    for i, (src, label) in enumerate(valid):
        (new / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, new / label / f"unseen_{i}{Path(src).suffix}")
    p = Printer(quiet=True)
    res = evaluate(run, str(new), p, n_bootstrap=20, plots=False)
    found = sorted(Path(c["file"]).name for c in res["copies_of_training"])
    assert found == [f"seen_{i}.png" for i in range(3)]
    assert res["n_images"] == len(valid)
    assert any("copies of training images" in w for w in res["warnings"])


def test_a_giant_copy_group_is_warned_about_and_recorded():
    """Chains of near-copies can join many images; the split keeps them together, so say so."""
    from types import SimpleNamespace

    from nfx.config import RunConfig
    from nfx.console import Printer
    from nfx.workflows.splitting import check_copies

    rng = np.random.default_rng(0)
    base = rng.standard_normal((copies.LOW, copies.LOW)).astype(np.float32)
    sigs = [base + 0.01 * rng.standard_normal(base.shape).astype(np.float32) for _ in range(25)]
    sigs += [rng.standard_normal(base.shape).astype(np.float32) for _ in range(75)]
    samples = [SimpleNamespace(path=f"img{i}.png", label="a" if i % 2 else "b") for i in range(100)]
    p = Printer(quiet=True)
    with pytest.raises(Exception, match="different labels"):  # the giant group mixes labels
        check_copies(RunConfig(), samples, np.stack(sigs).astype(np.float16), p)
    samples = [SimpleNamespace(path=f"img{i}.png", label="a") for i in range(100)]
    copy_of, summary = check_copies(RunConfig(), samples, np.stack(sigs).astype(np.float16), p)
    assert summary["largest_group"] == 25
    assert any("one copy group holds 25 of 100 images" in w for w in p.warnings), p.warnings
    p2 = Printer(quiet=True)
    check_copies(RunConfig(), samples[:78], np.stack(sigs[:3] + sigs[25:]).astype(np.float16), p2)
    assert not any("copy group holds" in w for w in p2.warnings)
