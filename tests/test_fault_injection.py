"""Kill a stage at one of its file writes (SIGKILL, as a crash or `kill -9` would), run it again,
and the run folder ends exactly as an uninterrupted run's: the same files, byte for byte (the
manifests but for their timing fields), no staging folder, lock or temporary left; nothing outside
the run folder changes.

The kill points: `CAMSEG_FAULT_AFTER_WRITES=N` (pipeline.runs) makes a command kill itself right
after its N-th file write. Every write of train-cls (started.json, last.pt after each of 2 epochs,
model.pt, the manifest) and of train-seg (started.json, last.pt, model.pt, the manifest), and
seeded draws among those of cams (started.json, 24 seeds, the manifest) and pseudo (started.json,
then 24 masks, written in the stage's own process with pseudo.workers=1); a kill after the manifest
leaves a finished result still to be moved in. On the shapes dataset of test_reliability (16 + 8
images of 32 px). The killed command is a fork of this process (python and torch already loaded:
a fresh process would take seconds to start); the run that resumes it is the command line's
`main`, here.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
from pathlib import Path

import pytest
from test_reliability import Runs

from pipeline.cli import main
from pipeline.runs import FAULT_AFTER_WRITES, MANIFEST, read_json

pytestmark = pytest.mark.slow  # stages killed and rerun: `make test-fast` leaves it out

ORDER = [("data", "data"), ("train-cls", "classifier"), ("cams", "cams"), ("calibrate", "calibrate"),
         ("pseudo", "pseudo"), ("train-seg", "segmenter")]  # (stage, its folder), each reading those before it
WRITES = {"train-cls": 5, "cams": 26, "pseudo": 25, "train-seg": 4}
DRAWS = 6  # kill points drawn among the writes of cams and of pseudo
# Manifest fields that measure the run rather than describe its result.
TIMING = {"seconds", "peak_rss_mib", "images_per_second", "written_now"}


def kill_points() -> list[tuple[str, int]]:
    rng = random.Random(20240607)
    drawn = {stage: sorted(rng.sample(range(1, WRITES[stage] + 1), DRAWS)) for stage in ("cams", "pseudo")}
    return [*((stage, n) for stage in ("train-cls", "train-seg") for n in range(1, WRITES[stage] + 1)),
            *((stage, n) for stage, points in drawn.items() for n in points)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, made at the path every killed run then uses (checkpoints hold the
    run folder's path) and moved aside."""
    runs = Runs(tmp_path_factory.mktemp("faults"))
    run_dir = runs.dir.parent / "run"
    for stage, _ in ORDER:
        assert main(runs.argv(stage, run_dir)) == 0
    run_dir.rename(runs.dir)
    return runs


def digests(folder: Path, leave_out: Path | None = None) -> dict[str, str]:
    """The sha256 of every file under `folder` (hidden ones too), but those in `leave_out`."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*"))
            if path.is_file() and (leave_out is None or leave_out not in path.parents)}


def without_timing(value):
    if isinstance(value, dict):
        return {key: without_timing(item) for key, item in value.items() if key not in TIMING}
    return value


def killed_after_write(argv: list[str], n: int) -> int:
    """Run the command in a fork of this process that kills itself after its n-th file write;
    returns its wait status."""
    pid = os.fork()
    if pid == 0:  # the command: it never returns into the tests
        code = 3
        try:
            os.environ[FAULT_AFTER_WRITES] = str(n)
            code = main(argv)
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("stage, n", kill_points(), ids=lambda point: str(point))
def test_stage_killed_at_a_write_resumes_to_the_uninterrupted_run(reference, stage, n):
    folders = [folder for _, folder in ORDER[:[name for name, _ in ORDER].index(stage) + 1]]
    run_dir = reference.dir.parent / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    for folder in folders[:-1]:
        shutil.copytree(reference.dir / folder, run_dir / folder)
    around = digests(reference.dir.parent, run_dir)

    status = killed_after_write(reference.argv(stage, run_dir), n)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert not (run_dir / folders[-1]).exists()  # killed before its result moved in
    if stage in ("cams", "pseudo"):  # one file a write after started.json: killed where meant
        [staging] = run_dir.glob(f".{folders[-1]}.staging-*")
        assert len([p for p in staging.iterdir() if p.name != "started.json"]) == n - 1
    assert main(reference.argv(stage, run_dir)) == 0

    got = digests(run_dir)
    want = {name: digest for name, digest in digests(reference.dir).items() if name.split("/")[0] in folders}
    assert got.keys() == want.keys()  # no staging folder, lock or temporary left
    for name in got:
        if name.endswith(MANIFEST):
            assert without_timing(read_json(run_dir / name)) == without_timing(read_json(reference.dir / name))
        else:
            assert got[name] == want[name], name
    assert digests(reference.dir.parent, run_dir) == around
