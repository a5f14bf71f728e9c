"""Per-scan work spread over processes (or a Dask cluster), results in input order, with a bounded
number in flight.

Decoding, view classification and ROI detection are CPU-bound Python + OpenCV per scan, so
threads would serialise on the GIL for much of it: processes. Results come back in the order of
the inputs whatever the order workers finish in, so outputs do not depend on the worker count.
At most ``window`` tasks are submitted ahead of the consumer, so a slow consumer (a save) never
lets finished results pile up in memory.

Past one machine, the same tasks go to the workers of a ``dask.distributed`` scheduler (the
optional extra ``dask``): same function, same order, so the same bytes come out. Its workers must
see the raw folder at the same path (a shared mount): tasks carry file loaders, not file contents.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def worker_count(setting: int | None) -> int:
    """``setting`` processes, or every CPU this process may run on when it is null (or 0)."""
    if setting:
        if int(setting) < 1:
            raise ValueError(f"workers must be a positive number of processes or null, got {setting!r}")
        return int(setting)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _worker_init() -> None:
    """One OpenCV thread per worker process: the pool already uses every core."""
    import cv2

    cv2.setNumThreads(1)


def map_ordered(
    fn: Callable[[T], R], items: Iterable[T], workers: int, window: int, scheduler: str | None = None
) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` processes (in this process when ``workers`` is 1), or
    over the workers of the Dask scheduler at ``scheduler`` (``tcp://host:8786``) when one is given.

    ``fn`` and the items must be picklable (module-level functions, plain data, dataset loaders).
    An exception raised by ``fn`` is re-raised here, so what stops a serial run stops this one.
    """
    if scheduler:
        yield from _map_dask(fn, items, window, scheduler)
        return
    if workers <= 1:
        yield from map(fn, items)
        return
    # spawn, not fork: a forked child inherits OpenCV's thread-pool state from a parent that
    # already used OpenCV (pytest, Kedro, notebooks) and can deadlock (as cohort.writer).
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        yield from _in_order(pool.submit, fn, items, max(window, workers))


def _map_dask(fn: Callable[[T], R], items: Iterable[T], window: int, scheduler: str) -> Iterator[R]:
    try:
        from distributed import Client
    except ImportError as err:
        raise ImportError(f"dask_scheduler is set ({scheduler}) but dask.distributed is not installed: "
                          "pip install -e '.[dask]'") from err
    with Client(scheduler, set_as_default=False) as client:
        threads = sum(client.nthreads().values())
        log.info("per-scan work on the Dask cluster at %s (%d worker threads)", scheduler, threads)

        # pure=False: two identical tasks (copies of a scan) are still two tasks, as in a local pool
        def submit(f: Callable[[T], R], item: T) -> Any:
            return client.submit(f, item, pure=False)

        yield from _in_order(submit, fn, items, max(window, 2 * threads))


def _in_order(submit: Callable[..., Any], fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """Submit ahead at most ``window`` tasks; yield their results in submission order."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
