"""fastai DataLoaders over the decoded-image cache (wiring layer).

Items: cached float16 size×size×3 [0, 1] → albumentations (train only) → normalise with the
checkpoint's mean/std → CHW float32 tensor, integer label.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfx.data import augment
from nfx.data.intensity import normalise


class CachedImageDataset(torch.utils.data.Dataset):
    def __init__(self, entries: Sequence[Path], targets: Sequence[int], mean, std, tfm: Any = None):
        self.entries, self.targets = list(entries), list(targets)
        self.mean, self.std, self.tfm = mean, std, tfm

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int):
        img = np.load(self.entries[i]).astype(np.float32)
        if self.tfm is not None:
            img = np.clip(self.tfm(image=img)["image"], 0.0, 1.0)
        x = torch.from_numpy(normalise(img, self.mean, self.std))
        return x, torch.tensor(self.targets[i], dtype=torch.long)


def _balanced_loader_cls():
    from fastai.data.load import DataLoader

    class BalancedDataLoader(DataLoader):
        """Draws each epoch's indices with replacement, weighted by 1 / class frequency, so every
        class is seen equally often (--balance sampler). Uses the loader's own seeded RNG."""

        def __init__(self, dataset, *, weights, **kw):
            super().__init__(dataset, **kw)
            self.weights = list(weights)

        def get_idxs(self):
            return self.rng.choices(range(self.n), weights=self.weights, k=self.n)

    return BalancedDataLoader


def class_weights(targets: Sequence[int], n_classes: int) -> list[float]:
    """N / (K · n_c): 1.0 for every class when balanced."""
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=n_classes).astype(float)
    counts[counts == 0] = 1.0
    return (len(targets) / (n_classes * counts)).tolist()


def make_dataloaders(
    train: tuple[Sequence[Path], Sequence[int]],
    valid: tuple[Sequence[Path], Sequence[int]],
    *,
    bs: int,
    mean,
    std,
    aug: str,
    flip: bool,
    num_workers: int,
    device: torch.device,
    seed: int,
    balance: str = "none",
    n_classes: int = 2,
):
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader

    train_ds = CachedImageDataset(*train, mean, std, augment.build(aug, flip) if aug != "none" else None)
    valid_ds = CachedImageDataset(*valid, mean, std, None)
    common = dict(num_workers=num_workers, device=device, pin_memory=device.type == "cuda",
                  persistent_workers=num_workers > 0)
    import random

    random.seed(seed)  # fastai's DataLoader draws its shuffling RNG from python's random
    if balance == "sampler":
        w = class_weights(train[1], n_classes)
        per_item = [w[t] for t in train[1]]
        train_dl = _balanced_loader_cls()(train_ds, weights=per_item, bs=bs, shuffle=True, drop_last=True, **common)
    else:
        train_dl = DataLoader(train_ds, bs=bs, shuffle=True, drop_last=True, **common)
    valid_dl = DataLoader(valid_ds, bs=bs * 2, shuffle=False, drop_last=False, **common)
    return DataLoaders(train_dl, valid_dl, device=device)
