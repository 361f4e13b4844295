"""A new stage is one module plus one line in the registry: a toy stage registered here runs
through `execute` with a manifest, is skipped while up to date, and shows up where the registry's
consumers look (the command line, `all`, the report's stage times)."""
from __future__ import annotations

import sys
import types

import pytest

from pipeline import stages
from pipeline.cli import parse
from pipeline.config import load_config
from pipeline.report.build import stage_seconds
from pipeline.runs import MANIFEST, read_json


def toy_stage(runs: list) -> types.ModuleType:
    """A stage that writes one file and records each run in `runs`."""
    toy = types.ModuleType("pipeline.stages.toy")
    toy.OUTPUT = lambda cfg: "toy"
    toy.UPSTREAM = lambda cfg: []
    toy.SECTION = lambda cfg: {"seed": cfg.seed}
    toy.DATASET_SPLITS = lambda cfg: []  # it reads no dataset

    def run(cfg, out, run_dir):
        runs.append(out)
        (out / "toy.txt").write_text("made")
        return {"files": 1}

    toy.run = run
    return toy


@pytest.fixture
def toy_runs(monkeypatch) -> list:
    runs: list = []
    monkeypatch.setitem(sys.modules, "pipeline.stages.toy", toy_stage(runs))
    registry = list(stages.STAGES)
    registry.insert(registry.index("report"), "toy")  # the one line a new stage adds
    monkeypatch.setattr(stages, "STAGES", registry)
    return runs


def test_a_registered_stage_runs_with_a_manifest_and_is_skipped_while_up_to_date(toy_runs, tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    manifest = stages.execute("toy", cfg)
    folder = tmp_path / "run" / "toy"
    assert toy_runs == [tmp_path / "run" / f".toy.staging-{stages.settings_hash('toy', cfg)}"]  # moved in
    assert (folder / "toy.txt").read_text() == "made"
    assert read_json(folder / MANIFEST) == manifest
    assert manifest["stage"] == "toy" and manifest["config"] == {"seed": 0}
    assert manifest["metrics"] == {"files": 1}

    assert stages.execute("toy", cfg) == manifest and len(toy_runs) == 1  # up to date: skipped
    reseeded = load_config(None, [f"run_dir={tmp_path / 'run'}", "seed=1"])
    assert stages.execute("toy", reseeded)["config"] == {"seed": 1} and len(toy_runs) == 2


def test_a_registered_stage_is_where_the_registry_consumers_look(toy_runs, tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    assert parse(["toy"]).stage == "toy"
    assert stages.pipeline_stages(cfg)[-1] == "toy"  # `all` runs it before the upper bound and the report
    assert stages.stage_folders(cfg)["toy"] == tmp_path / "run" / "toy"
    manifest = stages.execute("toy", cfg)
    assert stage_seconds(stages.stage_folders(cfg)) == {"toy": manifest["seconds"]}


def test_an_unknown_kind_is_refused(monkeypatch):
    odd = toy_stage([])
    odd.KIND = "sideways"
    monkeypatch.setitem(sys.modules, "pipeline.stages.odd", odd)
    with pytest.raises(ValueError, match="stage 'odd': KIND 'sideways' is none of plain, training"):
        stages.kind("odd")
