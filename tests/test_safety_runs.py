"""Run folders that never lose a user's data: camseg deletes only the files its own manifests list,
and only once a new result is finished, so a failed rerun keeps the previous result; a folder
holding files camseg did not write is refused before any work; one command at a time writes to a
run folder (or an --out folder); a full disk or a read-only folder is one line, and exit 2.

On the shapes dataset of test_reliability (16 + 8 images of 32 px), in process.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from test_reliability import Runs, copy_run

from pipeline import runs, stages
from pipeline.cli import main
from pipeline.runs import MANIFEST, StageError, load_manifest, read_json
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


def test_folder_of_an_earlier_camseg_whose_manifest_lists_no_files_is_refused(ref, tmp_path, capsys):
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls"], models=True)
    manifest = run_dir / "classifier" / MANIFEST
    manifest.write_text(json.dumps({key: value for key, value in read_json(manifest).items() if key != "files"}))
    before = contents(run_dir)
    assert main(ref.argv("train-cls", run_dir, extra=("cls.epochs=1",))) == 2
    assert capsys.readouterr().err == (
        f"error: {run_dir / 'classifier'}: its manifest lists no files (an earlier camseg's), so camseg "
        f"cannot tell its files from others: move the folder away to run this stage again\n")
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


# ---- one command at a time writes to a folder ---------------------------------------------------

@pytest.fixture
def live_pid():
    """The pid of a process of this machine that runs through the test."""
    process = subprocess.Popen(["sleep", "120"])
    yield process.pid
    process.kill()
    process.wait()


def ended_pid() -> int:
    """The pid of a process of this machine that has ended (as a killed run's has)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def hold(folder: Path, pid: int, host: str = socket.gethostname()) -> Path:
    """The lock file a command writing to `folder` keeps there."""
    lock = folder / "camseg.lock"
    lock.write_text(json.dumps({"pid": pid, "host": host, "since": "2024-06-07 10:00:00"}))
    return lock


@pytest.mark.parametrize("host", [socket.gethostname(), "elsewhere.example.org"])
def test_second_command_stops_with_one_line_naming_the_holder(ref, tmp_path, capsys, live_pid, host):
    """On another machine even an ended process may still run there: only the pid's own machine
    can tell."""
    run_dir = copy_run(ref, tmp_path / "run", ["data"])
    pid = live_pid if host == socket.gethostname() else ended_pid()
    lock = hold(run_dir, pid, host)
    before = contents(run_dir)
    assert main(ref.argv("train-cls", run_dir)) == 2
    assert capsys.readouterr().err == (
        f"error: {run_dir}: in use by process {pid} on {host} since 2024-06-07 10:00:00; wait for it to "
        f"finish, or delete {lock} if that process is gone\n")
    assert contents(run_dir) == before


def test_lock_of_a_run_that_was_killed_is_taken_over_with_a_warning(ref, tmp_path, caplog):
    run_dir = copy_run(ref, tmp_path / "run", ["data"])
    pid = ended_pid()
    hold(run_dir, pid)
    assert main(ref.argv("data", run_dir)) == 0
    assert f"{run_dir}: taking over the lock of process {pid}, which has ended" in caplog.messages
    assert sorted(p.name for p in run_dir.iterdir()) == ["data"]


def test_the_lock_names_the_running_command_and_goes_when_it_ends(ref, tmp_path, monkeypatch):
    run_dir = copy_run(ref, tmp_path / "run", ["data"])
    seen = []
    monkeypatch.setattr(stages, "execute", lambda *args, **kwargs: seen.append(read_json(run_dir / "camseg.lock")))
    assert main(ref.argv("data", run_dir)) == 0
    [holder] = seen
    assert (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname())
    assert abs(time.mktime(time.strptime(holder["since"], "%Y-%m-%d %H:%M:%S")) - time.time()) < 60
    assert sorted(p.name for p in run_dir.iterdir()) == ["data"]


def test_label_and_explain_refuse_an_out_folder_another_command_writes(ref, tmp_path, capsys, live_pid):
    out = tmp_path / "out"
    out.mkdir()
    hold(out, live_pid)
    images = ref.data / "JPEGImages"
    for argv in (["explain", "--images", str(images), "--out", str(out), "--model", "resnet18"],
                 ["label", "--images", str(images), "--run", str(ref.dir), "--out", str(out)]):
        assert main(argv) == 2
        assert capsys.readouterr().err.startswith(f"error: {out}: in use by process {live_pid} on ")
    assert sorted(p.name for p in out.iterdir()) == ["camseg.lock"]


# ---- a full disk, a read-only folder -------------------------------------------------------------

def full_disk(monkeypatch, name: str) -> None:
    """Make the temporary file of every atomic write of a file called `name` fail half-way, as on
    a full disk."""
    write = Path.write_bytes

    def half_then_full(self, data):
        if self.name.startswith(f".{name}.") and self.name.endswith(runs.TEMPORARY):
            write(self, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(self, data)

    monkeypatch.setattr(Path, "write_bytes", half_then_full)


def test_full_disk_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    runs.write_bytes(path, b"previous")
    full_disk(monkeypatch, "model.pt")
    with pytest.raises(StageError) as error:
        runs.write_bytes(path, b"new" * 1000)
    assert str(error.value) == f"{path}: cannot write (No space left on device)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert path.read_bytes() == b"previous"


def test_full_disk_during_a_rerun_is_one_line_and_keeps_the_finished_result(ref, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls"], models=True)
    before = contents(run_dir / "classifier")
    full_disk(monkeypatch, "last.pt")
    assert main(ref.argv("train-cls", run_dir, extra=("cls.epochs=1",))) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f"error: {run_dir}/.classifier.staging-")
    assert line.endswith("/last.pt: cannot write (No space left on device)")
    assert contents(run_dir / "classifier") == before
    assert not list(run_dir.rglob(f"*{runs.TEMPORARY}"))


def test_read_only_run_folder_is_one_line_and_exit_2(ref, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(ref, tmp_path / "run", ["data"])
    before = contents(run_dir)
    opened = os.open

    def read_only(path, flags, *args, **kwargs):
        if Path(path).is_relative_to(run_dir) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return opened(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert main(ref.argv("train-cls", run_dir)) == 2
    assert capsys.readouterr().err == f"error: {run_dir}: cannot write here (Read-only file system)\n"
    assert contents(run_dir) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_run_folder_without_write_permission_is_one_line_and_exit_2(ref, tmp_path, capsys):
    run_dir = copy_run(ref, tmp_path / "run", ["data"])
    run_dir.chmod(0o555)
    try:
        assert main(ref.argv("train-cls", run_dir)) == 2
    finally:
        run_dir.chmod(0o755)
    assert capsys.readouterr().err == f"error: {run_dir}: cannot write here (Permission denied)\n"


def test_a_folder_that_cannot_be_made_is_one_line_and_exit_2(ref, tmp_path, capsys):
    """A dataset to build under a path that passes through a file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    argv = ref.argv("data", tmp_path / "run", tmp_path / "a-file" / "scenes")
    assert main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {blocker}") and line.endswith(("Not a directory", "File exists"))
    [staged] = (tmp_path / "run").iterdir()  # the failed stage's staging folder, to resume: no result
    assert staged.name.startswith(".data.staging-") and [p.name for p in staged.iterdir()] == ["started.json"]
