"""Augmentation presets: float [0, 1] in and out, CLAHE around uint8, flips only when allowed."""

from __future__ import annotations

import numpy as np
import pytest

from nfx.data import augment


def _img(seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((64, 64, 3), np.float32)
    x[:, :32] = 0.8  # left half bright: a horizontal flip is visible
    return np.clip(x + rng.normal(0, 0.02, x.shape).astype(np.float32), 0, 1)


@pytest.mark.parametrize("preset", ["none", "light", "strong"])
@pytest.mark.parametrize("flip", [True, False])
def test_contract_float_unit_range(preset, flip):
    t = augment.build(preset, flip)
    for seed in range(15):
        y = t(image=_img(seed))["image"]
        assert y.dtype == np.float32 and y.shape == (64, 64, 3)
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 + 1e-6


def test_none_is_identity():
    x = _img()
    assert np.array_equal(augment.build("none")(image=x)["image"], x)
    assert augment.describe("none") == []


def test_no_flip_never_mirrors():
    import albumentations as A

    x = _img()
    # only the flip can move the bright half to the right; with flip=False it never does
    for preset in ("light", "strong"):
        names = " ".join(augment.describe(preset, flip=False))
        assert "Flip" not in names
        assert "HorizontalFlip" in " ".join(augment.describe(preset, flip=True))
    t = A.Compose([tr for tr in augment.build("light", flip=True).transforms if "Flip" in type(tr).__name__])
    flipped = [t(image=x)["image"][:, 48:].mean() > 0.5 for _ in range(40)]
    assert any(flipped) and not all(flipped)


def test_clahe_runs_on_float_input_and_returns_float():
    import albumentations as A

    x = (np.linspace(0.3, 0.5, 64 * 64, dtype=np.float32).reshape(64, 64, 1).repeat(3, 2))
    y = A.Compose([augment.clahe_on_float(p=1.0)])(image=x)["image"]
    assert y.dtype == np.float32 and y.shape == x.shape
    assert y.max() <= 1.0 and y.min() >= 0.0
    assert (y.max() - y.min()) > (x.max() - x.min())  # local contrast was stretched
    assert "CLAHE" in " ".join(augment.describe("strong"))


def test_unknown_preset():
    with pytest.raises(ValueError, match="none, light or strong"):
        augment.build("extreme")
