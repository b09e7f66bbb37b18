"""Candidate search for nfx.data.copies: which pairs of signatures to compare, in all 8
orientations, and the confirmation. Up to EXACT_MAX images every pair (blocked matrix products);
beyond, multi-index hashing of principal-coordinate sign bits with a bound before the full
comparison (sub-quadratic, memory linear in the number of images). Pure numpy."""

from __future__ import annotations

import numpy as np

from nfx.data.copy_signature import mask, orient, orientations

HASH_BITS = 64  # principal-coordinate sign bits, multi-index hashed in 16-bit quarters
# multi-probe: each quarter is also looked up with one of its PROBE_BITS least certain bits (smallest
# |coordinate|) flipped. (PROBED, PROBE_BITS) on 100 000 synthetic signatures with copies near the threshold
# (benchmarks/copies.py, 2 cores): (2, 1) 80 % of them found in 5.1 s, (4, 1) 83 % in 6.0 s, (4, 2) 89 % in 8.3 s
PROBED = 4  # quarters probed
PROBE_BITS = 2


def pca(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, up to `dims` principal directions with real variance, largest first)."""
    mu = x.mean(axis=0)
    xc = (x - mu).astype(np.float64)
    vals, vecs = np.linalg.eigh(xc.T @ xc)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    real = int((vals > 1e-9 * max(vals[0], 1e-30)).sum())  # a direction without variance gives noise bits
    return mu, vecs[:, : max(1, min(dims, real))].astype(np.float32)


def exact_candidates(v: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Every pair above the threshold, by blocked matrix products (exact; used up to EXACT_MAX images)."""
    n = len(v)
    x = v.reshape(n, -1)
    out = []
    for k, o in enumerate(orientations(v)):
        q = o.reshape(n, -1)
        ii, jj = [], []
        for s in range(0, n, 1024):
            c = q[s : s + 1024] @ x.T
            i, j = np.nonzero(c >= threshold - 1e-4)
            ii.append(i + s)
            jj.append(j)
        i, j = np.concatenate(ii), np.concatenate(jj)
        keep = i < j if k == 0 else i != j
        out.append((i[keep], j[keep], k))
    return out


def hashed_pairs(v: np.ndarray, threshold: float) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], int]:
    """Confirmed pairs (i, j, correlation) found by multi-index hashing, and the candidates examined.

    Codes: signs of the 64 principal coordinates (centred on the data's mean), in four 16-bit
    quarters; a pair is a candidate when its codes agree on a whole quarter, or would with one of
    that quarter's two least certain bits flipped (multi-probe), so any pair whose codes differ in
    at most 3 bits is found. Near-identical copies agree on nearly every bit; copies near the
    threshold can differ in more and be missed (docs/COPIES.md). The 8 orientations are applied
    to the projections (a signed permutation of their rows), never to the data. Candidates are
    first bounded on the mean + principal coordinates (x·y ≤ x_Q·y_Q + |x_⊥||y_⊥| for unit
    vectors), and only those that can reach the threshold are compared in full."""
    n = len(v)
    x = v.reshape(n, -1)
    mu, proj = pca(x, HASH_BITS)
    per = max(1, proj.shape[1] // 4)  # four quarters (fewer bits each when the data has fewer directions)
    proj = proj[:, : per * min(4, proj.shape[1])]
    chunks = proj.shape[1] // per
    basis = np.linalg.qr(np.concatenate([mu[:, None], proj], axis=1).astype(np.float64))[0].astype(np.float32)
    weights = 1 << np.arange(per, dtype=np.int64)
    offset = mu @ proj

    def coords(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """codes, each quarter's least certain bits, basis coordinates and the norm outside the
        basis, of orientation k of every image."""
        pb, pp = pull(basis, k), pull(proj, k)
        y, codes = np.empty((n, basis.shape[1]), np.float32), np.empty((n, chunks), np.int64)
        doubt = np.empty((n, chunks * PROBE_BITS), np.int64)
        for s in range(0, n, 50_000):
            xs = x[s : s + 50_000]
            y[s : s + 50_000] = xs @ pb
            z = (xs @ pp - offset).reshape(len(xs), chunks, per)
            codes[s : s + 50_000] = ((z > 0) * weights).sum(axis=2)
            doubt[s : s + 50_000] = np.argsort(np.abs(z), axis=2)[:, :, :PROBE_BITS].reshape(len(xs), -1)
        rest = np.sqrt(np.clip(1.0 - (y.astype(np.float64) ** 2).sum(axis=1), 0.0, None)).astype(np.float32)
        return codes, doubt, y, rest

    db, d0, y0, r0 = coords(0)
    order = [np.argsort(db[:, t], kind="stable") for t in range(chunks)]
    found, examined = [], 0
    for k in range(8):
        q, dk, yk, rk = (db, d0, y0, r0) if k == 0 else coords(k)
        keys = []
        for t in range(chunks):
            flips = [q[:, t] ^ (1 << dk[:, t * PROBE_BITS + b]) for b in range(PROBE_BITS)] if t < PROBED else []
            for probe in [q[:, t], *flips]:
                i, j = equal_keys(db[:, t], probe, order[t])
                keep = i < j if k == 0 else i != j
                keys.append(i[keep] * n + j[keep])
        pairs = np.sort(np.concatenate(keys))  # a pair agreeing on several quarters is examined once
        pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])]
        examined += len(pairs)
        for s in range(0, len(pairs), 200_000):  # in chunks: memory stays bounded
            i, j = np.divmod(pairs[s : s + 200_000], n)
            can = np.einsum("ij,ij->i", yk[i], y0[j]) + rk[i] * r0[j] >= threshold - 1e-4
            found.append(confirm(v, i[can], j[can], k, threshold))
    return found, examined


def confirm(v: np.ndarray, i: np.ndarray, j: np.ndarray, k: int, threshold: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs (i in orientation k, j) whose correlation reaches the threshold: (i, j, corr)."""
    if not len(i):
        return i, j, np.zeros(0, np.float32)
    c = np.einsum("ij,ij->i", orient(v[i], k).reshape(len(i), -1), v[j].reshape(len(j), -1))
    hit = c >= threshold
    return i[hit], j[hit], c[hit]


def pull(proj: np.ndarray, k: int) -> np.ndarray:
    """P_k with orient(x, k) · p == x · P_k[:, c] for every column p of proj (n²×m, n×n blocks)."""
    n = int(round(proj.shape[0] ** 0.5))
    w = proj.reshape(n, n, -1) * mask(n, k)[:, :, None]
    return np.ascontiguousarray((np.swapaxes(w, 0, 1) if k >= 4 else w).reshape(n * n, -1))


def equal_keys(db: np.ndarray, q: np.ndarray, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with q[i] == db[j] (`order`: db's argsort, when known)."""
    order = np.argsort(db, kind="stable") if order is None else order
    sdb = db[order]
    lo = np.searchsorted(sdb, q, "left")
    cnt = np.searchsorted(sdb, q, "right") - lo
    total = int(cnt.sum())
    i = np.repeat(np.arange(len(q)), cnt)
    start = np.repeat(lo - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt)
    return i, order[start + np.arange(total)]


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each of n items, the smallest index of its connected component under the edges a–b
    (vectorised: minimum labels pushed along the edges, then pointer jumping, until stable)."""
    lab = np.arange(n, dtype=np.int64)
    if not len(a):
        return lab
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    while True:
        m = np.minimum(lab[a], lab[b])
        new = lab.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        while True:  # pointer jumping: a label's label is as good, and smaller
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, lab):
            return lab
        lab = new
