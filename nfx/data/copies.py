"""Copies of one image (other size, encoding, bit depth, window, a few pixels of crop, a 90°/180°
rotation or a mirror) found from decoded pixels, and grouped (pure numpy).

Public medical sets hold re-saved copies of one image; a split that puts two copies on both
sides validates on a training image. This module owns:

- the **signature** of a decoded image (float32 H×W×C in [0, 1], after VOI): the grey image
  squished to a 32×32 thumbnail (at ingest: one area reduction of the model input the cache makes
  anyway; elsewhere: Gaussian pyramid, bilinear to 128, 4×4 block means — the two correlate
  ≥ 0.996), its
  2-D DCT-II (orthonormal) and the 16×16
  lowest frequencies kept (256 numbers, stored as float16 beside the decode-cache entry), of which
  the 10×10 lowest (`USED`) are compared: a shift of a few pixels scrambles the highest ones, and
  dropping them also separates distinct images better (docs/COPIES.md). Because
  the DCT is orthonormal, the dot product of two compared blocks with the DC term removed and scaled to
  unit length is the Pearson correlation of the two *low-passed* thumbnails: invariant to any
  linear change of brightness/contrast (window, bit depth), and blind to the pixel-level noise of
  JPEG re-encoding and resampling. A mirror multiplies coefficient k of the flipped axis by
  (-1)^k and a transpose swaps the axes, so the 8 rotations/mirrors of a signature are sign
  flips and a transpose of it: no image is decoded or resized again to compare orientations.
- the **candidate search** (nfx.data.copy_search), in all 8 orientations: up to `EXACT_MAX` images
  every pair is compared (blocked matrix products; exact, ≈ 1 s for 5 000 on 2 cores); beyond
  that, multi-index hashing of sign bits of the data's principal coordinates (sub-quadratic,
  memory linear in the number of images, but it misses some copies whose correlation is near the
  threshold: docs/COPIES.md "Grouping at scale"). Only confirmed pairs are kept.
- the **confirmation**: the best correlation over the 8 orientations ≥ `THRESHOLD`, chosen from
  the labelled real-image set in docs/COPIES.md (`python benchmarks/copies.py`).
- **grouping**: connected components of the confirmed pairs (copies of copies are one group).

ImageHash was considered (the issue asks to prefer a kept library): its hashes take PIL images,
so nfx's float arrays after VOI would be quantised to 8 bit first, and a mirrored or rotated copy
needs 8 re-hashes of 8 re-made PIL images; its 64-bit pHash alone is also the measure that
PITFALLS.md quotes at recall 0.08 on transformed copies. The DCT of a 32×32 thumbnail is a few
lines of numpy, works on the float arrays directly and gives the confirmation measure too.

Images with almost no contrast (a blank frame) carry no signature and are never grouped.
Must not import torch, fastai or pydicom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nfx.data.copy_search import components, confirm, exact_candidates, hashed_pairs
from nfx.data.copy_signature import (  # noqa: F401  (nfx.data.copies is where callers find them)
    FLAT_STD,
    LOW,
    MID,
    SIG_VERSION,
    THUMB,
    USED,
    correlation,
    mask,
    orient,
    orientations,
    signature,
    signature_of_input,
    thumbnail,
    unit_vectors,
)

EXACT_MAX = 5_000  # up to this many images every pair is compared (blocked matrix products)
THRESHOLD = 0.98  # correlation of the low-passed thumbnails, over the USED×USED block (docs/COPIES.md)


@dataclass
class CopyGroups:
    """group[i]: the index of the first image of i's copy group (i itself when it has no copy)."""

    group: np.ndarray
    pairs: list[tuple[int, int, float]]  # confirmed (i, j, correlation), i < j
    flat: np.ndarray  # images with no contrast (never grouped)
    candidates: int = 0  # pairs confirmed or rejected (the search's work)

    def members(self) -> dict[int, list[int]]:
        """Groups of two or more images: root → member indices."""
        out: dict[int, list[int]] = {}
        for i, g in enumerate(self.group.tolist()):
            out.setdefault(g, []).append(i)
        return {g: m for g, m in out.items() if len(m) > 1}


def group_copies(sigs: np.ndarray | Sequence[np.ndarray], threshold: float = THRESHOLD,
                 exact_max: int = EXACT_MAX) -> CopyGroups:
    """Group N signatures (N×LOW×LOW) into copy groups: candidates in 8 orientations (every pair up
    to `exact_max` images, multi-index hashing beyond), confirmed by the correlation ≥ threshold,
    joined transitively (connected components: copies of copies are one group)."""
    sigs = np.asarray(sigs)
    n = len(sigs)
    if n == 0:
        return CopyGroups(np.zeros(0, np.int64), [], np.zeros(0, bool))

    v, ok = unit_vectors(sigs)
    idx = np.flatnonzero(ok)
    v = v[idx]
    examined = 0
    p, r, c = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if len(idx) > 1:
        if len(v) <= exact_max:
            found = []
            for i, j, k in exact_candidates(v, threshold):
                examined += len(i)
                for s in range(0, len(i), 100_000):  # confirm in chunks: memory stays bounded
                    found.append(confirm(v, i[s : s + 100_000], j[s : s + 100_000], k, threshold))
        else:
            found, examined = hashed_pairs(v, threshold)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        a, b, c = (np.concatenate([f[m] for f in [empty, *found]]) for m in range(3))
        p, r = idx[np.minimum(a, b)], idx[np.maximum(a, b)]
        order = np.lexsort((-c, r, p))  # one row per pair: its best orientation
        p, r, c = p[order], r[order], c[order]
        first = np.ones(len(p), bool)
        first[1:] = (p[1:] != p[:-1]) | (r[1:] != r[:-1])
        p, r, c = p[first], r[first], c[first]
    group = components(n, p, r)
    pairs = list(zip(p.tolist(), r.tolist(), np.round(c.astype(np.float64), 4).tolist(), strict=True))
    return CopyGroups(group, pairs, ~ok, examined)


def cross_matches(query: np.ndarray, ref: np.ndarray, threshold: float = THRESHOLD) -> list[tuple[int, int, float]]:
    """(query index, ref index, correlation) of each query image that is a copy of a reference
    image (its best match), e.g. evaluation images that are copies of training images."""
    q = np.asarray(query)
    r = np.asarray(ref)
    if not len(q) or not len(r):
        return []
    g = group_copies(np.concatenate([r, q]), threshold)
    nr = len(r)
    out: dict[int, tuple[int, float]] = {}
    for i, j, c in g.pairs:
        if i < nr <= j:
            qi = j - nr
            if qi not in out or c > out[qi][1]:
                out[qi] = (i, c)
    return sorted((qi, ri, c) for qi, (ri, c) in out.items())
