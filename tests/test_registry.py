"""A new stage is one module plus one line in the registry: toy stages registered here run
through `execute` with a manifest, read each other's outputs by name, are skipped while up to
date, and show up where the registry's consumers look (the command line, `all`, the report's stage
times). The registry turns the stages' declarations into paths, hashes and the order `all` runs."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from pipeline import stages
from pipeline.cli import parse
from pipeline.config import load_config, section_keys
from pipeline.report.build import stage_seconds
from pipeline.runs import MANIFEST, read_json


def toy_stage(runs: list) -> types.ModuleType:
    """A stage that writes one file and records each run in `runs`."""
    toy = types.ModuleType("pipeline.stages.toy")
    toy.FOLDER = "toy"
    toy.OUTPUTS = {"text": "toy.txt"}
    toy.INPUTS = {}
    toy.KEYS = ("seed",)
    toy.DATASET_SPLITS = lambda cfg: []  # it reads no dataset

    def run(cfg, out, inputs):
        runs.append(out)
        (out / "toy.txt").write_text(f"made with seed {cfg.seed}")
        return {"files": 1}

    toy.run = run
    return toy


def reader_stage() -> types.ModuleType:
    """A stage that copies the toy stage's text, which it reads by name."""
    reader = types.ModuleType("pipeline.stages.toy_reader")
    reader.FOLDER = "reader"
    reader.OUTPUTS = {"copy": "copy.txt"}
    reader.INPUTS = {"made": ("toy", "text")}
    reader.KEYS = ()
    reader.DATASET_SPLITS = lambda cfg: []
    reader.run = lambda cfg, out, inputs: {"copied": (out / "copy.txt").write_text(inputs["made"].read_text())}
    return reader


@pytest.fixture
def toy_runs(monkeypatch) -> list:
    runs: list = []
    monkeypatch.setitem(sys.modules, "pipeline.stages.toy", toy_stage(runs))
    monkeypatch.setitem(sys.modules, "pipeline.stages.toy_reader", reader_stage())
    registry = list(stages.STAGES)
    registry[registry.index("report"):registry.index("report")] = ["toy", "toy-reader"]  # their lines
    monkeypatch.setattr(stages, "STAGES", registry)
    return runs


def test_a_registered_stage_runs_with_a_manifest_and_is_skipped_while_up_to_date(toy_runs, tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    manifest = stages.execute("toy", cfg)
    folder = tmp_path / "run" / "toy"
    assert toy_runs == [tmp_path / "run" / f".toy.staging-{stages.settings_hash('toy', cfg)}"]  # moved in
    assert (folder / "toy.txt").read_text() == "made with seed 0"
    assert read_json(folder / MANIFEST) == manifest
    assert manifest["stage"] == "toy" and manifest["config"] == {"seed": 0}
    assert manifest["metrics"] == {"files": 1}

    assert stages.execute("toy", cfg) == manifest and len(toy_runs) == 1  # up to date: skipped
    reseeded = load_config(None, [f"run_dir={tmp_path / 'run'}", "seed=1"])
    assert stages.execute("toy", reseeded)["config"] == {"seed": 1} and len(toy_runs) == 2


def test_a_stage_reads_another_stages_output_by_name_and_reruns_with_it(toy_runs, tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    assert stages.input_paths("toy-reader", cfg) == {"made": tmp_path / "run" / "toy" / "toy.txt"}
    with pytest.raises(stages.runs.StageError, match="no finished 'toy' stage here; run `python -m pipeline toy`"):
        stages.execute("toy-reader", cfg)
    stages.execute("toy", cfg)
    first = stages.execute("toy-reader", cfg)
    assert first["upstream"] == ["toy"]
    assert (tmp_path / "run" / "reader" / "copy.txt").read_text() == "made with seed 0"
    reseeded = load_config(None, [f"run_dir={tmp_path / 'run'}", "seed=1"])
    stages.execute("toy", reseeded)
    assert stages.execute("toy-reader", reseeded)["hash"] != first["hash"]  # its input changed
    assert (tmp_path / "run" / "reader" / "copy.txt").read_text() == "made with seed 1"


def test_a_registered_stage_is_where_the_registry_consumers_look(toy_runs, tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    assert parse(["toy"]).stage == "toy"
    assert stages.pipeline_stages(cfg)[-2:] == ["toy", "toy-reader"]  # `all` runs them before the report
    assert stages.stage_folders(cfg)["toy"] == tmp_path / "run" / "toy"
    manifest = stages.execute("toy", cfg)
    assert stage_seconds(stages.stage_folders(cfg)) == {"toy": manifest["seconds"]}


def test_an_unknown_kind_is_refused(monkeypatch):
    odd = toy_stage([])
    odd.KIND = "sideways"
    monkeypatch.setitem(sys.modules, "pipeline.stages.odd", odd)
    with pytest.raises(ValueError, match="stage 'odd': KIND 'sideways' is none of plain, training"):
        stages.kind("odd")


def test_a_variant_is_its_stages_module_with_the_declarations_it_changes():
    gt, first = stages.module("train-seg-gt"), stages.module("train-seg")
    assert (gt.FOLDER, first.FOLDER) == ("segmenter-gt", "segmenter")
    assert gt.run is first.run and gt.KEYS == first.KEYS and stages.kind("train-seg-gt") == "training"
    assert stages.ground_truth("train-seg-gt") and not stages.ground_truth("train-seg")
    assert stages.switch("train-seg-r2") == "round2.enabled" and stages.switch("train-seg") is None


def test_inputs_resolve_to_the_outputs_their_stages_declare():
    cfg = load_config(None, ["run_dir=run", "seg.encoder_weights=classifier"])
    assert stages.input_paths("eval-seg-gt", cfg) == {"segmenter": Path("run/segmenter-gt/model.pt")}
    assert stages.input_paths("train-seg", cfg) == {"masks": Path("run/pseudo"),
                                                    "classifier": Path("run/classifier/model.pt")}
    assert stages.input_paths("eval-pseudo", cfg) == {"masks": Path("run/pseudo"), "affinity": None}  # off
    assert stages.upstream("eval-pseudo", cfg) == ["pseudo"]
    walked = load_config(None, ["run_dir=run", "affinity.enabled=true", "seg.labels=affinity"])
    assert stages.input_paths("eval-pseudo", walked)["affinity"] == Path("run/pseudo-aff")
    assert stages.upstream("train-seg", walked) == ["pseudo-aff"]
    fine_tuned = load_config(None, ["run_dir=run", "round2.enabled=true", "round2.start_from=segmenter"])
    assert stages.input_paths("train-seg-r2", fine_tuned) == {"masks": Path("run/pseudo-r2"),
                                                              "segmenter": Path("run/segmenter/model.pt")}
    assert stages.output_path(Path("run"), "eval-seg", "predictions") == Path("run/eval/seg/predictions")
    with pytest.raises(KeyError, match="stage 'eval-seg' has no output 'model' "
                                       "\\(its outputs: results, predictions, manifest\\)"):
        stages.output_path(Path("run"), "eval-seg", "model")


def test_every_input_names_a_registered_stage_and_one_of_its_outputs():
    for cfg in (load_config(None, ["round2.enabled=true", "affinity.enabled=true", "seg.labels=affinity",
                                   "seg.encoder_weights=classifier"]), load_config(None)):
        for name in stages.STAGES:
            for stage, output in stages.declared_inputs(name, cfg).values():
                assert stages.STAGES.index(stage) < stages.STAGES.index(name), (name, stage)  # `all`'s order
                stages.output_path(Path("run"), stage, output)


@pytest.mark.parametrize("override, unchanged, changed", [
    ("seg.eval_flip=true", ["train-seg", "train-seg-r2", "train-seg-gt"], ["eval-seg", "eval-seg-r2", "eval-seg-gt"]),
    ("seg.eval_crf=true", ["train-seg", "train-seg-gt"], ["eval-seg", "eval-seg-gt"]),
    ("seg.crop_size=48", ["train-aff", "eval-seg"], ["train-seg", "train-seg-gt"]),
    ("affinity.crop_size=48", ["train-seg"], ["train-aff"]),
    ("round2.samples=40", ["train-seg", "pseudo-r2", "train-seg-gt"], ["train-seg-r2"]),
])
def test_a_stages_settings_cover_exactly_the_keys_it_declares(override, unchanged, changed):
    base = load_config(None, ["round2.enabled=true", "affinity.enabled=true"])
    edited = load_config(None, ["round2.enabled=true", "affinity.enabled=true", override])
    assert {name for name in [*unchanged, *changed]
            if stages.settings(name, edited) != stages.settings(name, base)} == set(changed)


def test_off_and_maskless_stages_are_left_out_of_all():
    shown = stages.pipeline_stages(load_config(None))
    assert "train-seg-gt" in shown and "train-seg-r2" not in shown and "train-aff" not in shown
    on = stages.pipeline_stages(load_config(None, ["round2.enabled=true", "affinity.enabled=true"]))
    assert on[-6:] == ["pseudo-r2", "eval-pseudo-r2", "train-seg-r2", "eval-seg-r2", "train-seg-gt", "eval-seg-gt"]
    folder = load_config(None, ["data.name=folder", "round2.enabled=true"])
    assert stages.pipeline_stages(folder) == ["data", "train-cls", "cams", "calibrate", "pseudo", "train-seg",
                                              "pseudo-r2", "train-seg-r2"]


def test_every_setting_of_the_stages_sections_is_some_stages_key():
    """A key no stage declares would change a stage's results without rerunning it: each key of
    the sections the stages read is declared by one (as a key or a section), switches stages, or
    chooses inputs; the number of CRF workers changes no file."""
    declared = {key for name in stages.STAGES for key in stages.module(name).KEYS}
    switches = {stages.switch(name) for name in stages.STAGES}
    choosing = {"seg.labels", "pseudo.workers"}
    for section in ("data", "cls", "cam", "eval", "pseudo", "affinity", "seg", "round2", "report"):
        loose = [key for key in section_keys(section)
                 if section not in declared and key not in declared | switches | choosing]
        assert loose == [], section
