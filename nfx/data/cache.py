"""Decoded-image cache: decode + resize (nfx.data.resize policy) once, reuse across epochs and runs.

Key = file identity (absolute path, size, mtime) + preprocessing settings (input size, resize
policy, DICOM frame) + PREPROC_VERSION, so a changed file or setting is a cache miss (the old entry is simply
never read again). Entries are float16 size×size×3 .npy files in [0, 1], written atomically
(temp file + rename), so concurrent runs sharing a cache never see half-written entries.
Beside each entry, `<key>.sig<version>.npy` holds the image's copy signature (nfx.data.copies),
computed from the model input just made (the decoded array for the crop policy; no second
decode); an entry counts as a hit only
with its signature, so a cache made before signatures existed is decoded once more.

`fill` checks hits in the calling process (a stat, a hash and the entry's .npy header per file: no
decoding, no pool start-up), then decodes the misses on all cores. Pool choice, measured by
benchmarks/bench_ingest.py on 2 cores (docs/BENCHMARKS.md, "Ingest"): a thread pool beat a
process pool for both DICOM (RLE via pylibjpeg-rle, which releases the GIL) and PNG at 300
images, because spawned worker processes pay ~1-2 s of interpreter + import start-up. So
`pool="auto"` means threads; `pool="process"` stays available (and is tested) for larger
machines where pure-Python decode steps dominate.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nfx.data import intensity
from nfx.data.images import decode_file
from nfx.data.parallel import POOLS as PARALLEL_POOLS
from nfx.data.parallel import map_files
from nfx.errors import MACHINE_ERRNOS, BadFileError, MachineError, short_reason
from nfx.records import InputSpec

PREPROC_VERSION = 1
POOLS = ("auto", *PARALLEL_POOLS)  # auto = threads (measured, see above)


def default_cache_dir() -> Path:
    env = os.environ.get("NFX_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nfx"


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def preprocess(path: str | Path, size: int, frame: int | None, resize: str, voi: str = "stored",
               notes: list[str] | None = None) -> np.ndarray:
    """decode → 3 channels → resize by `resize` policy: float32 size×size×3 in [0, 1]."""
    return preprocess_with_signature(path, size, frame, resize, voi, notes)[0]


def preprocess_with_signature(path: str | Path, size: int, frame: int | None, resize: str, voi: str = "stored",
                              notes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(the model input as `preprocess` makes it, the copy signature of the decoded image)."""
    return input_and_signature(decode_file(Path(path), frame=frame, voi=voi, notes=notes), size, resize)


def input_and_signature(img: np.ndarray, size: int, resize: str) -> tuple[np.ndarray, np.ndarray]:
    """A decoded image's model input (resize policy `resize`) and its copy signature, made from
    that input where it holds the whole picture (nfx.data.copies.signature_of_input: no second
    pass over the full-size image), else from the decoded image."""
    from nfx.data import copies
    from nfx.data.resize import resize as resize_to

    x = resize_to(intensity.to_channels(img, 3), size, resize)
    sig = copies.signature_of_input(x, resize, img.shape[:2])
    return x, (sig if sig is not None else copies.signature(img))


def _reason(e: BaseException) -> str:
    if isinstance(e, BadFileError):
        return e.reason
    # a decoder crash must become a reason, not a traceback
    return f"could not be decoded ({short_reason(e, 120, with_type=True)}); remove or re-export it"


@dataclass
class Filled:
    """What ImageCache.fill returns."""

    entries: list[Path | None]  # the cache entry of each path, None when it could not be decoded
    bad: list[tuple[str, str]]  # (path, reason), sorted
    stats: dict[str, object]  # files, hits, decoded, bad, seconds, pool, workers
    notes: list[tuple[str, str]]  # (path, tolerated defect) of files decoded with a note

    def __iter__(self):  # `entries, bad = cache.fill(paths)`
        return iter((self.entries, self.bad))


class ImageCache:
    def __init__(self, cache_dir: str | Path | None, size: int, frame: int | None = None, *, resize: str,
                 voi: str = "stored"):
        from nfx.records import check_policy, check_voi

        self.resize = check_policy(resize)  # fails here, before any file is hashed or decoded
        self.voi = check_voi(voi)
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.size = int(size)
        self.frame = frame
        # np.save of a float16 size×size×3 array: a ≥ 64-byte header + the data
        self._min_bytes = self.size * self.size * 3 * 2 + 64

    @classmethod
    def for_spec(cls, cache_dir: str | Path | None, spec: InputSpec) -> ImageCache:
        """The cache that preprocesses as a model's InputSpec says (size, frame, resize, VOI fallback)."""
        return cls(cache_dir, spec.size, spec.frame, resize=spec.resize, voi=spec.voi)

    def key(self, path: str | Path) -> str:
        p = Path(path).resolve()
        st = p.stat()
        voi = "" if self.voi == "stored" else f"|voi={self.voi}"  # entries made before the option stay valid
        ident = f"{p}|{st.st_size}|{st.st_mtime_ns}|{self.size}|{self.resize}|{self.frame}{voi}|v{PREPROC_VERSION}"
        return hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:32]  # any file name

    def entry(self, path: str | Path) -> Path:
        k = self.key(path)
        return self.dir / k[:2] / f"{k}.npy"

    def _is_hit(self, e: Path) -> bool:
        """An entry whose header says float16 size×size×3 (not a pickle, not damaged) and whose
        signature is there; anything else is a miss, decoded again and replaced."""
        try:
            if sig_of(e).stat().st_size < SIG_BYTES:
                return False
            with open(e, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            return dtype == np.float16 and shape == (self.size, self.size, 3) and not fortran
        except (OSError, ValueError):
            return False

    def get(self, path: str | Path) -> np.ndarray:
        """The cached array (decoding and storing it on a miss)."""
        e = self.entry(path)
        if self._is_hit(e):
            try:
                return np.load(e)
            except (OSError, ValueError):
                pass  # damaged entry: rebuild it
        arr, sig = preprocess_with_signature(path, self.size, self.frame, self.resize, self.voi, notes=[])
        arr = arr.astype(np.float16)
        self._store(sig_of(e), sig)
        self._store(e, arr)
        return arr

    def _store(self, e: Path, arr: np.ndarray) -> None:
        e.parent.mkdir(parents=True, exist_ok=True)
        from nfx.runs import atomic_path

        with atomic_path(e, fsync=False) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)

    def fill(
        self,
        paths: Sequence[str],
        workers: int | None = None,
        on_done: Callable[[], None] | None = None,
        pool: str = "auto",
    ) -> Filled:
        """Decode every path into the cache. Returns a `Filled`: the entry per path (or None), bad
        (path, reason), statistics (hits, decoded, bad, seconds, pool) and the decode notes;
        `entries, bad = cache.fill(...)` unpacks the first two.

        Every path ends either with an entry or in `bad` with its reason.
        """
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}")
        t0 = time.perf_counter()
        entries: list[Path | None] = [None] * len(paths)
        bad: list[tuple[str, str]] = []
        misses: list[int] = []
        hits = 0
        for i, p in enumerate(paths):
            try:
                e = self.entry(p)
            except OSError as err:
                bad.append((p, f"cannot be read ({err.strerror or err}); check the path and permissions"))
                if on_done:
                    on_done()
                continue
            if self._is_hit(e):
                entries[i] = e
                hits += 1
                if on_done:
                    on_done()
            else:
                misses.append(i)

        n = max(1, workers or default_workers())
        if pool == "auto":
            pool = "thread"  # measured: see the module docstring
        args = [(str(self.dir), self.size, self.frame, self.resize, self.voi, i, paths[i]) for i in misses]
        results, pool = map_files(_decode_one, args, workers=n, pool=pool, on_done=on_done,
                                  initializer=_worker_init)
        for i, entry, reason in results:
            if entry is not None:
                entries[i] = Path(entry)
            else:
                bad.append((paths[i], reason))
        bad.sort()
        notes = [(paths[i], note_of(e).read_text()) for i, e in enumerate(entries)
                 if e is not None and note_of(e).is_file()]  # (path, tolerated defect)
        stats = {
            "files": len(paths), "hits": hits,
            "decoded": sum(1 for i in misses if entries[i] is not None), "bad": len(bad),
            "seconds": round(time.perf_counter() - t0, 3), "pool": pool, "workers": n,
        }
        return Filled(entries, bad, stats, notes)


def _worker_init() -> None:
    import warnings

    # pydicom warns on odd files; the reason reaches the user through bad_files instead
    warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
    try:
        import cv2

        cv2.setNumThreads(1)  # one image per process: no nested thread pools
    except Exception:  # pragma: no cover
        pass


def note_of(entry: Path) -> Path:
    return entry.with_suffix(".note")


def signatures(entries: Sequence[Path]) -> np.ndarray:
    """The copy signatures (N×16×16 float16) beside filled cache entries. One that cannot be read
    (damaged since `fill`) reads as a signature without contrast, which is never grouped."""
    from nfx.data.copies import LOW

    out = np.zeros((len(entries), LOW, LOW), dtype=np.float16)
    for i, e in enumerate(entries):
        try:
            a = np.load(sig_of(e), allow_pickle=False)
            if a.shape == (LOW, LOW) and np.isfinite(a).all():
                out[i] = a
        except (OSError, ValueError):
            pass
    return out


def sig_of(entry: Path) -> Path:
    """The copy signature beside a cache entry, named by the signature's version: an entry whose
    signature was made by an older definition (nfx.data.copies.SIG_VERSION) is a miss, decoded
    again, so signatures made two ways are never compared."""
    from nfx.data.copies import SIG_VERSION

    return entry.with_suffix(f".sig{SIG_VERSION}.npy")


SIG_BYTES = 16 * 16 * 2 + 64  # a float16 16×16 .npy


def _decode_one(args: tuple[str, int, int | None, str, str, int, str]) -> tuple[int, str | None, str | None]:
    """Decode one file into the cache (module level: runs in worker processes too)."""
    cache_dir, size, frame, resize, voi, i, path = args
    cache = ImageCache(cache_dir, size, frame, resize=resize, voi=voi)
    notes: list[str] = []
    try:
        e = cache.entry(path)
        arr, sig = preprocess_with_signature(path, size, frame, resize, voi, notes=notes)
        arr = arr.astype(np.float16)
    except Exception as err:
        return i, None, _reason(err)
    try:
        if notes:  # a tolerated defect (nfx.data.dicom): kept beside the entry, reported on every use
            e.parent.mkdir(parents=True, exist_ok=True)
            note_of(e).write_text("; ".join(notes))
        cache._store(sig_of(e), sig)  # first: an entry without its signature is a miss
        cache._store(e, arr)  # the atomic writer removes its temp file on failure
    except OSError as err:
        if err.errno in MACHINE_ERRNOS:  # the cache's disk, not the image: never a bad file; ends the map
            raise MachineError(f"decoded-image cache {cache.dir}: {err.strerror or err} (writing {e}); free space "
                               "there or point --cache-dir / NFX_CACHE_DIR at a writable disk with room") from err
        return i, None, _reason(err)
    return i, str(e), None


def predict_files(
    paths: Sequence[str],
    predict: Callable[[np.ndarray], np.ndarray],
    *,
    spec: InputSpec,
    n_classes: int,
    cache_dir: str | Path | None = None,
    bs: int = 32,
    on_decoded: Callable[[], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Files → class probabilities through the one inference input path (cache: decode the
    spec's frame, resize by its policy; normalise by its mean/std; N×3×size×size float32 batches) with any `predict` (torch or ONNX
    Runtime). Rows of files that could not be decoded are NaN; those files come back in `bad`."""
    from nfx.data.intensity import normalise

    entries, bad = ImageCache.for_spec(cache_dir, spec).fill(list(paths), on_done=on_decoded)
    probs = np.full((len(paths), n_classes), np.nan, dtype=np.float64)
    ok = [i for i, e in enumerate(entries) if e is not None]
    for s in range(0, len(ok), bs):
        idx = ok[s : s + bs]
        x = np.stack([normalise(np.load(entries[i]), spec.mean, spec.std) for i in idx])
        probs[idx] = predict(x)
        if on_batch:
            on_batch(len(idx))
    return probs, bad

