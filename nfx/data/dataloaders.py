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


def _train_loader_cls():
    from fastai.data.load import DataLoader

    class TrainDataLoader(DataLoader):
        """The training loader: every optimizer step sees one full effective batch.

        Contract:
        - Each epoch draws a permutation of the whole set (or, with `weights`, draws with
          replacement weighted by 1 / class frequency: --balance sampler) from the loader's own
          seeded RNG, then keeps the first `n` indices, `n` being the largest multiple of
          `window` = bs × accum that fits (of `bs` when the set is smaller than one window). So
          the remainder is dropped at the level of the optimizer step, not of the micro-batch:
          `--bs 4 --accum 8` and `--bs 32` see the same images per epoch in the same number of
          steps of 32 (dropping at micro-batch level gave the first a short extra step).
        - A different permutation every epoch, so the dropped remainder changes too.
        - With accum 1 the draws are the ones fastai's own `drop_last=True` loader makes.
        """

        def __init__(self, dataset, *, window: int, weights=None, **kw):
            super().__init__(dataset, drop_last=True, **kw)
            total, bs = len(dataset), self.bs
            self.weights = list(weights) if weights is not None else None
            self.total = total
            self.n = (total // window) * window if total >= window else (total // bs) * bs

        def get_idxs(self):
            if self.weights is not None:
                idxs = self.rng.choices(range(self.total), weights=self.weights, k=self.total)
            else:
                idxs = self.shuffle_fn(list(range(self.total)))
            return idxs[: self.n]

    return TrainDataLoader


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
    accum: int = 1,
):
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader

    train_ds = CachedImageDataset(*train, mean, std, augment.build(aug, flip) if aug != "none" else None)
    valid_ds = CachedImageDataset(*valid, mean, std, None)
    common = dict(num_workers=num_workers, device=device, pin_memory=device.type == "cuda",
                  persistent_workers=num_workers > 0)
    import random

    random.seed(seed)  # fastai's DataLoader draws its shuffling RNG from python's random
    per_item = None
    if balance == "sampler":
        w = class_weights(train[1], n_classes)
        per_item = [w[t] for t in train[1]]
    train_dl = _train_loader_cls()(train_ds, window=bs * max(1, accum), weights=per_item, bs=bs, shuffle=True,
                                   **common)
    valid_dl = DataLoader(valid_ds, bs=bs * 2, shuffle=False, drop_last=False, **common)
    return DataLoaders(train_dl, valid_dl, device=device)
