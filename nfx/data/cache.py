"""Decoded-image cache: decode + letterbox-resize once, reuse across epochs and runs.

Key = file identity (absolute path, size, mtime) + preprocessing settings + PREPROC_VERSION,
so a changed file or setting is a cache miss. Entries are float16 H×W×C .npy files written
atomically. Decoding runs on a thread pool (pydicom/PIL/OpenCV release the GIL for the heavy
parts).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from nfx.data import intensity
from nfx.data.images import decode_file
from nfx.errors import BadFileError

PREPROC_VERSION = 1


def default_cache_dir() -> Path:
    env = os.environ.get("NFX_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nfx"


def letterbox(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the longest side to `size` (area interpolation when shrinking) and pad with 0
    to a centred size×size square. Keeps the whole field of view and the aspect ratio."""
    import cv2

    h, w = img.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(img.astype(np.float32), (nw, nh), interpolation=interp)
    resized = intensity.as_hwc(resized)
    out = np.zeros((size, size, img.shape[2]), dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return np.clip(out, 0.0, 1.0)


def preprocess(path: str | Path, size: int, frame: int | None = None) -> np.ndarray:
    """decode → 3 channels → letterbox: float32 size×size×3 in [0, 1]."""
    img = decode_file(Path(path), frame=frame)
    return letterbox(intensity.to_channels(img, 3), size)


class ImageCache:
    def __init__(self, cache_dir: str | Path | None, size: int, frame: int | None = None):
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.size = size
        self.frame = frame

    def key(self, path: str | Path) -> str:
        p = Path(path).resolve()
        st = p.stat()
        ident = f"{p}|{st.st_size}|{st.st_mtime_ns}|{self.size}|{self.frame}|v{PREPROC_VERSION}"
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    def entry(self, path: str | Path) -> Path:
        k = self.key(path)
        return self.dir / k[:2] / f"{k}.npy"

    def get(self, path: str | Path) -> np.ndarray:
        """The cached array (decoding and storing it on a miss)."""
        e = self.entry(path)
        if e.is_file():
            try:
                return np.load(e)
            except (OSError, ValueError):
                pass  # damaged entry: rebuild it
        arr = preprocess(path, self.size, self.frame).astype(np.float16)
        self._store(e, arr)
        return arr

    def _store(self, e: Path, arr: np.ndarray) -> None:
        e.parent.mkdir(parents=True, exist_ok=True)
        tmp = e.with_name(f".{e.name}.{os.getpid()}.{id(arr)}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, e)

    def fill(
        self,
        paths: Sequence[str],
        workers: int | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> tuple[list[Path | None], list[tuple[str, str]]]:
        """Decode every path into the cache. Returns (entry per path or None, bad (path, reason))."""
        entries: list[Path | None] = [None] * len(paths)
        bad: list[tuple[str, str]] = []

        def one(i: int) -> None:
            try:
                self.get(paths[i])
                entries[i] = self.entry(paths[i])
            except BadFileError as e:
                bad.append((paths[i], e.reason))
            except Exception as e:  # a decoder crash must become a reason, not a traceback
                bad.append((paths[i], f"could not be decoded ({type(e).__name__}: {str(e)[:120]}); remove or re-export it"))
            finally:
                if on_done:
                    on_done()

        n = workers or max(1, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=n) as ex:
            list(ex.map(one, range(len(paths))))
        bad.sort()
        return entries, bad
