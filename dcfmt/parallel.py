"""Data-parallel helpers for the encoder: split a range over a few threads.

numpy releases the GIL inside its loops (ufuncs, ``take``, ``bincount``,
``cumsum``), so the block loops of the encoder scale over cores with plain
threads when each call works on a large block.  The helpers here keep the
encoder deterministic: work is split at fixed multiples of a block size, each
part returns its per-block partial results, and the caller combines them in
block order -- exactly the floating-point additions a single thread would do,
so the file bytes never depend on the number of threads.

The thread count comes from the environment variable ``DCZ_THREADS``
(default: the number of CPUs this process may use, at most 8);
``DCZ_THREADS=1`` runs everything on the calling thread.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Callable, TypeVar

__all__ = ["threads", "split", "ranges", "run", "map_ranges"]

T = TypeVar("T")

_MAX_THREADS = 8
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_local = threading.local()


def threads() -> int:
    """Threads the encoder may use: ``$DCZ_THREADS``, else the usable CPUs (at most 8)."""
    env = os.environ.get("DCZ_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass  # a malformed value must not break encoding: fall back to the default
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _MAX_THREADS))


def split(n: int, align: int, parts: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into at most ``parts`` contiguous ranges that start at multiples of ``align``.

    Ranges hold whole multiples of ``align`` elements (the last one takes the
    remainder), as evenly as that allows; empty ranges are left out.
    """
    if n <= 0:
        return []
    units = -(-n // align)
    parts = max(1, min(parts, units))
    bounds = [min(n, (units * i // parts) * align) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _executor(size: int) -> concurrent.futures.ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=size,
                                                          thread_name_prefix="dcz-encode",
                                                          initializer=_mark_worker)
            _pool_size = size
        return _pool


def _mark_worker() -> None:
    _local.worker = True


def _forget_pool() -> None:
    # a forked child has none of the parent's threads; a fresh pool starts on demand
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def ranges(n: int, align: int, *, min_parallel: int | None = None) -> list[tuple[int, int]]:
    """How :func:`map_ranges` splits ``[0, n)`` here and now (see :func:`split`).

    One range when there is one thread, when ``n`` is below ``min_parallel``
    (default ``2 * align``: threads would cost more than they save), or on a
    pool thread: a pool thread that split again and waited on the pool could
    deadlock once every worker waits.
    """
    if min_parallel is None:
        min_parallel = 2 * align
    parts = threads()
    if parts == 1 or n < min_parallel or getattr(_local, "worker", False):
        parts = 1
    return split(n, align, parts)


def run(fn: Callable[[int, int], T], parts: list[tuple[int, int]]) -> list[T]:
    """``[fn(a, b) for (a, b) in parts]``, the calls spread over the thread pool.

    Ranges must be disjoint, so ``fn`` may write to its own slice of a shared
    output array.  The results come in range order.  An exception from any
    call is raised here (the first range's first), after every call has
    finished.  On a pool thread the calls run one after another.
    """
    if len(parts) <= 1 or getattr(_local, "worker", False):
        # a pool thread never waits on the pool (see ranges)
        return [fn(a, b) for a, b in parts]
    pool = _executor(len(parts) - 1)
    futures = [pool.submit(fn, a, b) for a, b in parts[1:]]
    try:
        first = fn(*parts[0])  # the calling thread takes the first range
    finally:
        concurrent.futures.wait(futures)
    return [first] + [f.result() for f in futures]


def map_ranges(fn: Callable[[int, int], T], n: int, align: int, *,
               min_parallel: int | None = None) -> list[T]:
    """``run(fn, ranges(n, align))``: ``fn(a, b)`` over ranges of ``[0, n)`` starting at multiples of ``align``.

    Keep ``align`` the caller's block size, so that the per-block work is the
    same whatever the split.
    """
    return run(fn, ranges(n, align, min_parallel=min_parallel))
