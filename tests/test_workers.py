"""The worker pool of every mask stage and dataset build: its size from one `workers` setting,
one worker in this process, the jobs it reads ahead of their results."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline import workers
from pipeline.workers import worker_count, worker_pool


def _pid_and(value: int) -> tuple[int, int]:
    return os.getpid(), value * 2


def test_one_worker_runs_here_in_order_and_more_run_in_their_processes(monkeypatch):
    with worker_pool(1) as one:
        assert one.count == 1 and one.pool is None
        assert list(one.map(_pid_and, [(1,), (2,), (3,)])) == [(os.getpid(), v) for v in (2, 4, 6)]
    with worker_pool(2) as two:
        results = list(two.map(_pid_and, [(v,) for v in range(20)]))
    assert two.count == 2
    assert [value for _, value in results] == [2 * v for v in range(20)]
    assert os.getpid() not in {pid for pid, _ in results}
    with worker_pool(2) as two:  # sent three at a time, the last chunk short
        assert [value for _, value in two.map(_pid_and, [(v,) for v in range(20)], chunk=3)] == [
            2 * v for v in range(20)]
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert (worker_count(0), worker_count(5)) == (3, 5)


def test_the_pool_reads_jobs_only_a_few_ahead_of_the_results(monkeypatch):
    monkeypatch.setattr(workers, "IN_FLIGHT_PER_WORKER", 2)
    read = []

    def jobs():
        for value in range(50):
            read.append(value)
            yield (value,)

    with worker_pool(2) as pool:
        results = pool.map(_pid_and, jobs())
        next(results)
        assert len(read) == 4  # 2 per worker in flight before the first result is taken
        assert [value for _, value in results] == [2 * v for v in range(1, 50)]


def test_one_worker_sets_up_this_process_as_each_worker_would():
    seen = []
    with worker_pool(1, seen.append, ("ready",)) as pool:
        assert list(pool.map(len, [("ab",)])) == [2]
    assert seen == ["ready"]


@pytest.mark.parametrize("workers_setting", [0, 2])
def test_a_failing_job_fails_the_map(workers_setting):
    with worker_pool(workers_setting) as pool, pytest.raises(ZeroDivisionError):
        list(pool.map(divmod, [(1, 1), (1, 0)]))


# A parent that has run torch on two threads forks the pool, and each worker interpolates:
# before workers ran torch on one thread, the first worker's interpolation waited forever.
TORCH_AFTER_PARALLEL_PARENT = """
import torch
from torch.nn import functional as F
from pipeline.workers import worker_pool
torch.set_num_threads(2)
F.interpolate(torch.rand(1, 16, 400, 400), size=(800, 800), mode="bilinear")
def job(value):
    return float(F.interpolate(torch.full((1, 4, 50, 50), value), size=(100, 100), mode="bilinear").mean())
with worker_pool(2) as pool:
    print(list(pool.map(job, [(float(v),) for v in range(6)])))
"""


def test_workers_run_torch_after_the_parent_ran_it_on_several_threads():
    done = subprocess.run([sys.executable, "-c", TORCH_AFTER_PARALLEL_PARENT], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
