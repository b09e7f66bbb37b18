"""The one file-parallel map: a function over many files, on a thread pool (or spawned worker
processes), serially when there is too little work to pay for a pool, with a progress callback
per finished item. Results come back in input order.

Threads are the default: measured on 2 cores (docs/BENCHMARKS.md, "Ingest"), the decoders
(Pillow, pylibjpeg, OpenCV) release the GIL and spawned processes pay 1–2 s of start-up each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
POOLS = ("thread", "process", "serial")


def map_files(fn: Callable[[T], R], items: Sequence[T], *, workers: int, pool: str = "thread",
              serial_below: int = 2, on_done: Callable[[], Any] | None = None,
              initializer: Callable[[], Any] | None = None) -> tuple[list[R], str]:
    """[fn(x) for x in items] in parallel. Returns (results in input order, the pool used).

    `fn` must not raise for a bad file (return its reason instead): a raised exception ends
    the whole map. `pool="process"` needs a picklable module-level `fn` and runs it in spawned
    processes (the caller may hold torch/OpenMP threads, and fork after threads can hang).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}")
    if workers <= 1 or len(items) < serial_below:
        pool = "serial"
    results: list[Any] = [None] * len(items)
    if pool == "serial":
        for i, x in enumerate(items):
            results[i] = fn(x)
            if on_done:
                on_done()
        return results, pool
    ex: Executor
    if pool == "process":
        import multiprocessing as mp

        ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=initializer)
    else:
        ex = ThreadPoolExecutor(max_workers=workers)
    with ex:
        futures = {ex.submit(fn, x): i for i, x in enumerate(items)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            if on_done:
                on_done()
    return results, pool
