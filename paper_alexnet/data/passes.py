"""One pass over many images on every core: chunks decoded by worker processes ahead of the main process.

``prepare`` (decode, cut to §2's 256x256, write) and the statistics of a data set without a store (§2's
mean image, §4.1's PCA) both walk every image once. Here the workers take chunks of rows and the main
process takes their results in chunk order; up to ``ahead`` chunks are in the workers' hands at any time,
so they decode the next chunks while the main process writes or adds up the last one, and never wait for it
unless it falls that far behind.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, Optional, Sequence, TypeVar

Job = TypeVar("Job")


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a scheduler's share of the node), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def chunks(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) as consecutive (first, end) row ranges of ``size`` rows (the last may be shorter)."""
    return [(first, min(first + size, stop)) for first in range(start, stop, size)]


def ordered_map(
    work: Callable[[Job], object],
    jobs: Iterable[Job],
    workers: int,
    initializer: Optional[Callable] = None,
    initargs: Sequence = (),
    ahead: Optional[int] = None,
) -> Iterator[tuple[Job, object]]:
    """(job, work(job)) for every job, in the order of ``jobs``; ``workers`` processes (0: this one), with at
    most ``ahead`` jobs (default 4 a worker) handed out and not yet taken back. An exception in a job is raised
    here when its turn comes. ``initializer(*initargs)`` runs once in each worker (and here, for 0 workers):
    what it receives is inherited by forked workers, not copied job by job."""
    if workers <= 0:
        if initializer is not None:
            initializer(*initargs)
        for job in jobs:
            yield job, work(job)
        return
    ahead = ahead or 4 * workers
    pool = ProcessPoolExecutor(workers, initializer=initializer, initargs=tuple(initargs))
    pending: deque = deque()
    try:
        for job in jobs:
            pending.append((job, pool.submit(work, job)))
            if len(pending) >= ahead:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
