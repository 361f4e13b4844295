"""bench/teacher.py's trial folders: the run's shared stages linked in, and a trial folder left by
another run refused rather than scored. (The trials themselves run in test_end_to_end.py.)"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.stages import output_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from teacher import default_thresholds, shared_stages, trial_config  # noqa: E402


def fake_run(run: Path, digest: str) -> None:
    """Each shared stage's folder with a manifest of hash `digest` and one file, each written
    under a temporary name and renamed, as the stages write (a new file, not the linked one)."""
    for name in shared_stages(load_config(None, [])):
        manifest = output_path(run, name, "manifest")
        manifest.parent.mkdir(parents=True, exist_ok=True)
        for path, text in ((manifest, json.dumps({"hash": digest})), (manifest.parent / "file.bin", digest)):
            path.with_suffix(".tmp").write_text(text)
            os.replace(path.with_suffix(".tmp"), path)


def test_the_shared_stages_are_linked_and_another_runs_trial_is_refused(tmp_path):
    run, out = tmp_path / "run", tmp_path / "trials"
    fake_run(run, "first")
    cfg = load_config(None, [f"run_dir={run}"])
    trial = Path(trial_config(cfg, out, 0.6).run_dir)
    assert trial == out / "high-0.60"
    for name in shared_stages(cfg):
        assert (output_path(trial, name, "manifest").parent / "file.bin").samefile(
            output_path(run, name, "manifest").parent / "file.bin")
    assert trial_config(cfg, out, 0.6).run_dir == str(trial)  # the same run: found as it is
    fake_run(run, "second")  # the run's classifier and seeds made again
    with pytest.raises(SystemExit, match=r"high-0.60/data: this trial folder holds another run's 'data'"):
        trial_config(cfg, out, 0.6)


def test_a_cut_finer_than_two_decimals_keeps_its_own_trial_folder(tmp_path):
    assert default_thresholds(0.525) == [0.525, 0.625, 0.725, 0.825]
    assert default_thresholds(0.75) == [0.75, 0.85, 0.95]
    run, out = tmp_path / "run", tmp_path / "trials"
    fake_run(run, "first")
    cfg = load_config(None, [f"run_dir={run}"])
    cut, rounded = (trial_config(cfg, out, high) for high in (0.525, 0.53))
    assert (Path(cut.run_dir).name, Path(rounded.run_dir).name) == ("high-0.5250", "high-0.53")
    assert cut.pseudo.fg_threshold_high == 0.525
