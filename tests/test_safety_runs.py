"""Run folders that never lose a user's data: camseg deletes only the files its own manifests list,
and only once a new result is finished, so a failed rerun keeps the previous result; a folder
holding files camseg did not write is refused before any work.

On the shapes dataset of test_reliability (16 + 8 images of 32 px), in process.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_reliability import Runs, copy_run

from pipeline import runs
from pipeline.cli import main
from pipeline.runs import MANIFEST, load_manifest
from pipeline.stages import execute, stage_folder
from pipeline.stages import train_cls as train_cls_stage


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    made = Runs(tmp_path_factory.mktemp("safety"))
    for stage in ("data", "train-cls"):
        execute(stage, made.cfg(made.dir))
    return made


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, hidden ones too, by its path relative to it, and its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def file_count(folder: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(folder))


# ---- a folder camseg did not write is never touched -------------------------------------------

def test_run_dir_over_a_users_dataset_is_refused_and_the_dataset_kept(ref, tmp_path, capsys):
    """run_dir=project with the user's VOC dataset in project/data: the data stage's folder."""
    project = tmp_path / "project"
    dataset = project / "data"
    shutil.copytree(ref.data, dataset)
    before = contents(project)
    argv = ["data", "--config", str(ref.config), f"run_dir={project}", "data.name=voc", f"data.root={dataset}"]
    assert main(argv) == 2
    first = dataset / "ImageSets" / "Segmentation" / "train.txt"  # the first of its files by name
    assert capsys.readouterr().err == (
        f"error: {dataset}: holds {first} and {file_count(dataset) - 1} more files, which no camseg manifest "
        f"there lists; camseg deletes only what it wrote: move them away or set run_dir to another folder\n")
    assert contents(project) == before
    assert sorted(p.name for p in project.iterdir()) == ["data"]


def test_stage_folder_holding_a_users_file_is_refused_before_any_work(ref, tmp_path, capsys):
    run_dir = copy_run(ref, tmp_path / "run", ["data"])
    notes = run_dir / "classifier" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("my notes\n")
    before = contents(run_dir)
    assert main(ref.argv("train-cls", run_dir)) == 2
    assert capsys.readouterr().err.startswith(f"error: {notes.parent}: holds {notes}, which no camseg manifest")
    assert contents(run_dir) == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["classifier", "data"]  # no staging folder either


def test_finished_folder_with_a_users_file_added_is_refused_on_rerun(ref, tmp_path, capsys):
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls"], models=True)
    (run_dir / "classifier" / "notes.txt").write_text("mine\n")
    before = contents(run_dir)
    assert main(ref.argv("train-cls", run_dir, extra=("cls.epochs=1",))) == 2
    assert "notes.txt, which no camseg manifest there lists" in capsys.readouterr().err
    assert contents(run_dir) == before


# ---- a failed rerun keeps the previous result; a finished one replaces the listed files --------

@pytest.mark.parametrize("override, problem", [
    ("cls.weights={tmp}/missing.pt", "cls.weights: {tmp}/missing.pt: weights file not found"),
    ("cls.batch_size=64", "train-cls: 16 images per process are fewer than one batch of 64"),
])
def test_failed_rerun_keeps_the_previous_finished_result(ref, tmp_path, capsys, override, problem):
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls"], models=True)
    before = contents(run_dir / "classifier")
    assert sorted(before) == [MANIFEST, "model.pt"]
    assert main(ref.argv("train-cls", run_dir, extra=(override.format(tmp=tmp_path),))) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {problem.format(tmp=tmp_path)}"
    assert contents(run_dir / "classifier") == before


def test_finished_rerun_replaces_exactly_the_files_the_manifest_listed(ref, tmp_path):
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls"], models=True)
    old = contents(run_dir / "classifier")
    assert load_manifest(run_dir / "classifier")["files"] == ["model.pt"]
    assert main(ref.argv("train-cls", run_dir, extra=("cls.epochs=1",))) == 0
    new = contents(run_dir / "classifier")
    assert sorted(new) == [MANIFEST, "model.pt"] and new["model.pt"] != old["model.pt"]
    assert load_manifest(run_dir / "classifier")["config"]["cls"]["epochs"] == 1
    assert sorted(p.name for p in run_dir.iterdir()) == ["classifier", "data"]  # no staging folder left


class Killed(BaseException):
    """What a kill does to the process at that point: nothing after it runs."""


def test_a_run_killed_while_moving_its_result_in_is_completed_by_the_next_run(ref, tmp_path, monkeypatch):
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls"], models=True)
    cfg = ref.cfg(run_dir, extra=("cls.epochs=1",))
    rename = os.replace

    def killed_at_the_folders_rename(source, target):
        if Path(source).is_dir():
            raise Killed
        rename(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(runs.os, "replace", killed_at_the_folders_rename)
        with pytest.raises(Killed):
            execute("train-cls", cfg)
    assert not (run_dir / "classifier").exists()  # the old files were deleted, the new not moved in yet
    [staged] = [p for p in run_dir.iterdir() if p.name.startswith(".classifier.staging-")]
    finished = contents(staged)

    monkeypatch.setattr(train_cls_stage, "run", lambda *args: pytest.fail("trained again"))
    manifest = execute("train-cls", cfg)
    assert contents(stage_folder("train-cls", cfg)) == finished
    assert manifest == load_manifest(run_dir / "classifier") and manifest["config"]["cls"]["epochs"] == 1
    assert not staged.exists()
