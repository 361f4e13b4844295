"""Worker processes for per-image work on the CPU: the dense CRF of every mask (and the stored CAM
layers fused for it), the scenes of a built dataset. Every such pool is opened here, sized by one
`workers` setting (0: one process per CPU core; 1: no pool, the work runs in this process, in
order).

The pool forks, so it must be opened before a model goes to the GPU: no worker inherits a CUDA
context. A forked worker cannot use the OpenMP threads of a parent that already ran torch in
parallel (its first parallel torch call waits forever), so each worker runs torch on one thread,
as torch's DataLoader workers do: small torch steps in a worker (fusing stored CAM layers) are safe.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from multiprocessing import get_context

import torch

IN_FLIGHT_PER_WORKER = 4  # chunks of jobs queued per worker: enough to keep it busy, few in memory


def worker_count(workers: int) -> int:
    """The number of processes a `workers` setting asks for: 0 means one per CPU core."""
    return workers or os.cpu_count() or 1


class Workers:
    """`map` over a process pool, or over this process where the pool is None."""

    def __init__(self, count: int, pool=None):
        self.count = count
        self.pool = pool

    def map(self, function: Callable, jobs: Iterable[tuple], chunk: int = 1) -> Iterator:
        """`function(*job)` for every job, in order, sent to the workers `chunk` jobs at a time (more
        than one where a job takes too little time to be worth a message of its own). Jobs are read
        as results are taken, with a few chunks per worker in flight, so memory does not grow with
        the number of jobs (a pool's own imap would read the whole iterable ahead)."""
        if self.pool is None:
            return (function(*job) for job in jobs)
        return self._bounded(function, jobs, chunk)

    def _bounded(self, function: Callable, jobs: Iterable[tuple], chunk: int) -> Iterator:
        pending: deque = deque()
        for part in _chunks(jobs, chunk):
            pending.append(self.pool.apply_async(_run_each, (function, part)))
            if len(pending) >= IN_FLIGHT_PER_WORKER * self.count:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


def _chunks(jobs: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    jobs = iter(jobs)
    while part := list(islice(jobs, size)):
        yield part


def _run_each(function: Callable, jobs: list[tuple]) -> list:
    return [function(*job) for job in jobs]


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
    with get_context("fork").Pool(count, _one_thread_then, (initializer, initargs)) as pool:
        yield Workers(count, pool)


def _one_thread_then(initializer: Callable | None, initargs: tuple) -> None:
    """A forked worker's set-up: torch on one thread (see the module's note), then `initializer`."""
    torch.set_num_threads(1)
    if initializer is not None:
        initializer(*initargs)
