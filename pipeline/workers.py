"""Worker processes for per-image work that needs no torch: the dense CRF of every mask, the scenes
of a built dataset. Every such pool is opened here, sized by one `workers` setting (0: one process
per CPU core; 1: no pool, the work runs in this process, in order).

The pool forks, so it must be opened before a model goes to the GPU: no worker inherits a CUDA
context. Forking from a process with torch threads is safe as long as the workers run no torch.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from multiprocessing import get_context

IN_FLIGHT_PER_WORKER = 4  # jobs queued per worker: enough to keep it busy, few in memory


def worker_count(workers: int) -> int:
    """The number of processes a `workers` setting asks for: 0 means one per CPU core."""
    return workers or os.cpu_count() or 1


class Workers:
    """`map` over a process pool, or over this process where the pool is None."""

    def __init__(self, count: int, pool=None):
        self.count = count
        self.pool = pool

    def map(self, function: Callable, jobs: Iterable[tuple]) -> Iterator:
        """`function(*job)` for every job, in order. Jobs are read as results are taken, with at
        most a few per worker in flight, so memory does not grow with the number of jobs (a pool's
        own imap would read the whole iterable ahead)."""
        if self.pool is None:
            return (function(*job) for job in jobs)
        return self._bounded(function, jobs)

    def _bounded(self, function: Callable, jobs: Iterable[tuple]) -> Iterator:
        pending: deque = deque()
        for job in jobs:
            pending.append(self.pool.apply_async(function, job))
            if len(pending) >= IN_FLIGHT_PER_WORKER * self.count:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


@contextmanager
def worker_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> Iterator[Workers]:
    """`Workers` of `worker_count(workers)` forked processes, each set up by `initializer(*initargs)`;
    with one, the work runs here, set up the same way in this process."""
    count = worker_count(workers)
    if count == 1:
        if initializer is not None:
            initializer(*initargs)
        yield Workers(1)
        return
    with get_context("fork").Pool(count, initializer, initargs) as pool:
        yield Workers(count, pool)
