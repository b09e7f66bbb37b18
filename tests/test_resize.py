"""Resize policies (squish / letterbox / crop): geometry, the cache key, and the round trip
train → evaluate → predict (torch) → predict (ONNX) through one preprocessing path."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from PIL import Image

from nfx import api
from nfx.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from nfx.console import Printer
from nfx.data.cache import ImageCache
from nfx.data.resize import POLICIES, policy_of, resize
from nfx.errors import ConfigError


def _wide(h=40, w=80) -> np.ndarray:
    """A wide image: left quarter 1.0, right quarter 0.5, middle 0.25 (one channel)."""
    img = np.full((h, w, 1), 0.25, np.float32)
    img[:, : w // 4] = 1.0
    img[:, -(w // 4):] = 0.5
    return img


def test_squish_keeps_everything_and_fills_the_square():
    out = resize(_wide(), 32, "squish")
    assert out.shape == (32, 32, 1) and out.dtype == np.float32
    assert out[:, :6].min() > 0.99 and abs(out[:, -6:].mean() - 0.5) < 1e-3  # both ends survive
    assert out.min() >= 0.25 - 1e-6  # no padding


def test_letterbox_pads_top_and_bottom_with_zeros():
    out = resize(_wide(), 32, "letterbox")
    assert out.shape == (32, 32, 1)
    assert np.all(out[:8] == 0) and np.all(out[-8:] == 0)  # 40×80 → 16×32 centred
    assert out[8:24, :6].min() > 0.99 and abs(out[8:24, -6:].mean() - 0.5) < 1e-3


def test_crop_cuts_the_long_sides():
    out = resize(_wide(), 32, "crop")
    assert out.shape == (32, 32, 1)
    # 40×80 → 32×64, centre 32 columns: only the middle (0.25) region remains, no padding
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_keeps_the_decoding_contract(policy):
    rng = np.random.default_rng(0)
    img = rng.random((57, 31, 3), dtype=np.float32)
    out = resize(img, 48, policy)
    assert out.shape == (48, 48, 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_one_list_of_policies():
    from nfx.config import RESIZE

    assert RESIZE == POLICIES == ("squish", "letterbox", "crop")


def test_policy_names_and_old_runs():
    assert policy_of("letterbox (longest side → input_size, zero padding)") == "letterbox"  # runs before 0.2
    assert policy_of(None) == "letterbox" and policy_of("crop") == "crop"
    with pytest.raises(ValueError, match="unknown resize policy"):
        resize(_wide(), 32, "stretch")
    with pytest.raises(ValueError):
        policy_of("stretch")
    with pytest.raises(ConfigError, match="--resize"):
        RunConfig.from_dict({"data": {"resize": "stretch"}})


def test_cache_key_includes_the_policy(tmp_path):
    p = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((30, 60)) * 255).astype(np.uint8)).save(p)
    keys = {pol: ImageCache(tmp_path / "c", 32, resize=pol).key(p) for pol in POLICIES}
    assert len(set(keys.values())) == 3
    arrays = {pol: ImageCache(tmp_path / "c", 32, resize=pol).get(p) for pol in POLICIES}
    assert not np.array_equal(arrays["squish"], arrays["letterbox"])
    assert np.all(arrays["letterbox"][:8] == 0) and not np.all(arrays["squish"][:8] == 0)


@pytest.fixture(scope="module")
def wide_data(tmp_path_factory):
    """Non-square PNGs (the resize policy matters): 2 classes × 8 images, 48×96 px."""
    root = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(3)
    for k, cls in enumerate(["a", "b"]):
        (root / cls).mkdir()
        for i in range(8):
            img = rng.integers(0, 80, (48, 96, 3)).astype(np.uint8)
            img[:, :24] += np.uint8(100 * k)  # class b: a bright left border (lost by crop)
            img += np.kron(rng.integers(0, 76, (4, 8, 1)), np.ones((12, 12, 1))).astype(np.uint8)  # own shapes: no copies
            Image.fromarray(img).save(root / cls / f"{cls}{i}.png")
    return root


@pytest.mark.parametrize("policy", ["crop", "letterbox"])
def test_round_trip_train_evaluate_torch_onnx_same_preprocessing(wide_data, tmp_path, policy):
    cfg = RunConfig(
        data=DataConfig(path=str(wide_data), size=32, num_workers=0, resize=policy, valid_pct=0.25),
        model=ModelConfig(arch="test_nfnet", pretrained=False),
        train=TrainConfig(epochs=1, bs=4, agc=0.16),
        out=str(tmp_path), name=policy,
    )
    res = api.finetune(cfg, Printer(quiet=True))
    d = res.run_dir
    info = json.loads((d / "model.json").read_text())
    assert info["resize"] == policy
    assert json.loads((d / "config.json").read_text())["data"]["resize"] == policy
    ev = api.evaluate(d, None, Printer(quiet=True), n_bootstrap=50, plots=False)
    assert ev["provenance"]["model"]["resize"] == policy
    rows = {r["file"]: r for r in _csv(d / "predictions.csv")}
    files = sorted(rows)
    assert len(files) == ev["n_images"] >= 2
    # torch predict through the run's policy == evaluate's probabilities
    run = api.load_run(d)
    p_torch, bad = api.predict_probs(run.model, files, run.info, None, Printer(quiet=True))
    assert not bad
    for k, c in enumerate(run.info.classes):
        np.testing.assert_allclose(p_torch[:, k], [float(rows[f][f"p_{c}"]) for f in files], atol=2e-6)
    # the ONNX file carries the policy and ONNX Runtime reproduces torch from its metadata alone
    api.export(d, Printer(quiet=True))
    meta = {p.key: p.value for p in onnx.load(str(d / "model.onnx")).metadata_props}
    assert meta["nfx_resize"] == policy
    onnx_res = api.predict(d, files, Printer(quiet=True))
    assert {r["engine"] for r in onnx_res} == {"onnxruntime"}
    got = np.array([[r["probabilities"][c] for c in run.info.classes] for r in onnx_res])
    np.testing.assert_allclose(got, p_torch, atol=1e-4)
    # and another policy would have given other inputs: the policy really is applied
    other = "squish"
    info_other = dataclasses.replace(run.info, input=dataclasses.replace(run.info.input, resize=other))
    p_other, _ = api.predict_probs(run.model, files, info_other, None, Printer(quiet=True))
    assert np.abs(p_other - p_torch).max() > 1e-6


def _csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))
