"""Ingest benchmark: decode + letterbox + cache throughput (images/s) for DICOM and PNG with a
thread pool, a process pool and no pool, and the speed-up of a cached second run.

    python benchmarks/bench_ingest.py [--patients 100] [--src-size 512] [--size 224] [--cores 2]
                                      [--no-write]

Data: nfx's synthetic fundus generator (nfx/data/synthetic.py): the same images as RLE-lossless
DICOM (Ophthalmic Photography, RGB) and 8-bit RGB PNG, at --src-size px. Each measurement uses
a fresh, empty cache folder (cold = every file decoded; warm = the same call again, all hits).
Source files are in the OS page cache in both runs, so "cold" measures decoding, not the disk.
The process is pinned to --cores CPUs. Writes the table into docs/BENCHMARKS.md, section
"## Ingest" (only that section is replaced).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _doc import DOC, cpu_name  # noqa: E402


def _versions() -> str:
    from importlib.metadata import version

    pk = []
    for name in ("nfx", "numpy", "pydicom", "pillow", "opencv-python-headless", "pylibjpeg-rle"):
        try:
            pk.append(f"{name} {version(name)}")
        except Exception:
            continue
    return f"Python {platform.python_version()}, " + ", ".join(pk)


def measure(paths: list[str], size: int, pool: str, workers: int, repeats: int = 1) -> tuple[float, float]:
    """(cold seconds, warm seconds) for one fresh cache."""
    from nfx.data.cache import ImageCache

    cold, warm = [], []
    for _ in range(repeats):
        d = tempfile.mkdtemp(prefix="nfx-bench-cache-")
        try:
            cache = ImageCache(d, size, resize="letterbox")
            t = time.perf_counter()
            _, bad = cache.fill(paths, workers=workers, pool=pool)
            cold.append(time.perf_counter() - t)
            assert not bad, bad[:3]
            t = time.perf_counter()
            filled = cache.fill(paths, workers=workers, pool=pool)
            warm.append(time.perf_counter() - t)
            assert filled.stats["hits"] == len(paths)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return min(cold), min(warm)


def write_section(text: str) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    old = DOC.read_text() if DOC.is_file() else "# Benchmarks\n"
    pattern = re.compile(r"^## Ingest\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(new)
    os.replace(tmp, DOC)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=100, help="synthetic patients (2 images each)")
    ap.add_argument("--src-size", type=int, default=512, help="source image side in px")
    ap.add_argument("--size", type=int, default=224, help="cached input size in px")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="best of N (fresh cache each time)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[: args.cores]
        os.sched_setaffinity(0, cpus)  # inherited by worker processes
    workers = args.cores

    from nfx.data.synthetic import generate

    data = Path(tempfile.mkdtemp(prefix="nfx-bench-data-"))
    try:
        t = time.perf_counter()
        generate(data, n_patients=args.patients, size=args.src_size, seed=0)
        print(f"generated {2 * args.patients} images per format at {args.src_size}px in "
              f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
        sets = {
            "DICOM (RLE, RGB)": sorted(str(p) for p in (data / "dicom").rglob("*.dcm")),
            "PNG (8-bit RGB)": sorted(str(p) for p in (data / "png").rglob("*.png")),
        }
        from nfx.data.cache import preprocess

        for paths in sets.values():  # import decoders once, outside the timings
            preprocess(paths[0], args.size, None, "letterbox")
        rows = []
        for fmt, paths in sets.items():
            for pool in ("serial", "thread", "process"):
                cold, warm = measure(paths, args.size, pool, 1 if pool == "serial" else workers, args.repeats)
                rows.append((fmt, pool, len(paths), len(paths) / cold, len(paths) / warm, cold / warm))
                print(f"{fmt:18s} {pool:8s} cold {len(paths) / cold:8.1f} img/s  warm "
                      f"{len(paths) / warm:9.1f} img/s  speed-up {cold / warm:6.1f}x", file=sys.stderr)
    finally:
        shutil.rmtree(data, ignore_errors=True)

    header = ("| format | pool | images | decode + cache, cold (img/s) | cached run (img/s) | cached speed-up |\n"
              "|---|---|---:|---:|---:|---:|\n")
    body = "".join(f"| {f} | {p} ({'1 worker' if p == 'serial' else f'{workers} workers'}) | {n} | {c:.1f} | "
                   f"{w:.0f} | {s:.0f}× |\n" for f, p, n, c, w, s in rows)
    table = header + body
    print(table)
    best = {}
    for f, p, _, c, _, _ in rows:
        if p != "serial":
            best.setdefault(f, {})[p] = c
    ratio = "; ".join(f"{f}: process/thread = {v['process'] / v['thread']:.2f}×" for f, v in best.items())
    cmd = "python benchmarks/bench_ingest.py " + " ".join(sys.argv[1:])
    section = (
        "## Ingest\n\n"
        f"Decode (DICOM via pydicom.pixels / PNG via Pillow) → 3 channels → letterbox to {args.size} px → "
        f"float16 .npy cache entry, {2 * args.patients} synthetic {args.src_size} px images per format, "
        f"pinned to {args.cores} cores; best of {args.repeats} runs, each into an empty cache. "
        "\"cached run\" is the same `ImageCache.fill` call again (every file a hit: stat + key + size check).\n\n"
        f"- device: {cpu_name()}, {os.cpu_count()} logical CPUs visible, {args.cores} used\n"
        f"- versions: {_versions()}\n"
        f"- date: {dt.date.today().isoformat()}\n"
        f"- command: `{cmd.strip()}`\n\n"
        + table
        + f"\nPool choice (cold decode throughput): {ratio}. `ImageCache.fill(pool='auto')` uses the "
        "thread pool: the RLE (pylibjpeg-rle), PNG (zlib) and OpenCV resize steps release the GIL, and "
        "spawned worker processes pay interpreter + import start-up before their first image.\n\n"
    )
    if not args.no_write:
        write_section(section)
        print(f"wrote section 'Ingest' of {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
