"""A run killed with SIGKILL resumes to the files of an uninterrupted run, and no reader ever
sees half a file; bad images are skipped (per-image stages) or refused (trainings) with one line
per file; checkpoints are checked against the run's config; changing one key reruns exactly the
stages that depend on it.

On the shapes dataset (16 + 8 images of 32 px). One uninterrupted reference run per module, in
process; `python -m pipeline` runs in a subprocess only where a test kills it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.cam.seeds import load_cams
from pipeline.data.images import read_mask, save_mask
from pipeline.models.checkpoints import load_segmenter
from pipeline.models.segmenter import build_segmenter
from pipeline.runs import (MANIFEST, STARTED, StageError, finish, load_manifest, prepare, read_json,
                           staging_folder)
from pipeline.stages import STAGES, enabled, execute, settings_hash, stage_folder
from pipeline.train import save_checkpoint

pytestmark = pytest.mark.slow  # stages killed and rerun as subprocesses: `make test-fast` leaves it out

REPO = Path(__file__).resolve().parents[1]
TRAIN = [f"train_{i:05d}" for i in range(16)]
VAL = [f"val_{i:05d}" for i in range(8)]


class Runs:
    """Command lines and configs for run folders that share one tiny dataset and config file;
    `dir` is the uninterrupted reference run."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "reference"
        self.data = tmp / "data"
        self.config = tmp / "tiny.yaml"
        self.config.write_text(
            "threads: 1\ndata: {name: shapes, image_size: 32, n_train: 16, n_val: 8}\n"
            "cls: {split: train, crop_size: 32, epochs: 2, batch_size: 8}\n"
            "cam: {layers: [layer3, layer4], batch_size: 1}\n"
            "eval: {compare_images: 0}\npseudo: {splits: [train, val], workers: 1}\n"
            "seg: {crop_size: 32, epochs: 1, batch_size: 8, decoder_channels: [8, 8, 8, 8, 8],"
            " encoder_lr_scale: 0}\n")

    def overrides(self, run_dir: Path, data: Path | None = None, extra: tuple = ()) -> list[str]:
        return [f"run_dir={run_dir}", f"data.root={data or self.data}", *extra]

    def argv(self, stage: str, run_dir: Path, data: Path | None = None, extra: tuple = ()) -> list[str]:
        return [stage, "--config", str(self.config), *self.overrides(run_dir, data, extra)]

    def cfg(self, run_dir: Path, data: Path | None = None, extra: tuple = ()):
        return load_config(self.config, self.overrides(run_dir, data, extra))


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    runs = Runs(tmp_path_factory.mktemp("reliability"))
    for stage in ("data", "train-cls", "cams", "calibrate", "pseudo"):
        execute(stage, runs.cfg(runs.dir))
    return runs


def copy_run(ref: Runs, to: Path, stages: list[str], models: bool = False) -> Path:
    """A run folder holding the reference's finished `stages` (checkpoints only if `models`)."""
    ignore = None if models else shutil.ignore_patterns("*.pt")
    for stage in stages:
        folder = stage_folder(stage, ref.cfg(ref.dir))
        shutil.copytree(folder, to / folder.relative_to(ref.dir), ignore=ignore)
    return to


def staged(stage: str, cfg) -> Path:
    """The staging folder a run of `stage` on `cfg` writes into until it finishes."""
    return staging_folder(stage_folder(stage, cfg), settings_hash(stage, cfg))


def copy_data(ref: Runs, to: Path) -> Path:
    shutil.copytree(ref.data, to)
    return to


def error_lines(capsys) -> list[str]:
    """The error the command line ended with (after progress bars), one list item per line."""
    err = capsys.readouterr().err
    assert "error: " in err, err
    return ("error: " + err.rsplit("error: ", 1)[1]).strip().splitlines()


def version(path: Path) -> tuple[int, int]:
    """(inode, mtime): a file renamed over `path` or rewritten changes it."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder`, hidden ones too, and its version."""
    return {str(p.relative_to(folder)): version(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- SIGKILL in the middle of a stage ----------------------------------------------------------

def load_whole(path: Path) -> None:
    """Read a run's file completely; a half-written one raises."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            [data[key] for key in data.files]
    elif path.suffix == ".png":
        with Image.open(path) as image:
            image.load()
    elif path.suffix == ".pt":  # mapped, not read: fast, and a cut zip lacks its directory
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    elif path.suffix in (".json", ".lock"):
        json.loads(path.read_text())
    elif path.suffix == ".yaml":
        OmegaConf.create(path.read_text())
    else:
        raise AssertionError(f"{path}: unexpected file in a run folder")


def check_final_names(folder: Path, checked: set) -> None:
    """Load every file visible under a final (not hidden, temporary) name that is new or renamed
    over since the last look."""
    for path in folder.rglob("[!.]*"):
        try:
            key = (path, version(path))
            if key not in checked and path.is_file():
                load_whole(path)
                checked.add(key)
        except FileNotFoundError:  # removed since listed: last.pt once training ends
            pass


def kill_midway(ref: Runs, stage: str, run_dir: Path, started: callable) -> set[Path]:
    """Run `python -m pipeline <stage>`, loading each file it shows under a final name, and SIGKILL
    it (with its pool workers) as soon as `started()`; returns the files it loaded whole."""
    log = run_dir.parent / f"{stage}.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "pipeline", *ref.argv(stage, run_dir)],
                                   cwd=REPO, stdout=out, stderr=out, start_new_session=True)
    checked: set = set()
    try:
        while not started():
            assert process.poll() is None, f"{stage} ended before it was killed:\n{log.read_text()}"
            check_final_names(run_dir, checked)
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    check_final_names(run_dir, checked)
    assert load_manifest(stage_folder(stage, ref.cfg(run_dir))) is None  # killed before it finished
    return {path for path, _ in checked}


def test_train_cls_killed_after_an_epoch_resumes_to_the_same_weights(ref, tmp_path):
    run_dir = copy_run(ref, tmp_path / "run", ["data"])
    checkpoint = staged("train-cls", ref.cfg(run_dir)) / "last.pt"
    assert checkpoint in kill_midway(ref, "train-cls", run_dir, checkpoint.is_file)
    assert not (checkpoint.parent / "model.pt").exists() and not (run_dir / "classifier").exists()
    assert main(ref.argv("train-cls", run_dir)) == 0
    assert files(run_dir / "classifier").keys() == files(ref.dir / "classifier").keys()
    resumed = torch.load(run_dir / "classifier" / "model.pt", weights_only=True)
    uninterrupted = torch.load(ref.dir / "classifier" / "model.pt", weights_only=True)
    assert resumed["model"].keys() == uninterrupted["model"].keys()
    for name, weights in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], weights), name
    got, want = (load_manifest(d / "classifier")["metrics"] for d in (run_dir, ref.dir))
    assert got["train_loss"] == want["train_loss"] and len(got["train_loss"]) == 2
    assert got["val_map"] == want["val_map"]


def test_cams_killed_midway_resumes_to_the_same_seeds(ref, tmp_path):
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls"], models=True)
    cams, killed = run_dir / "cams", staged("cams", ref.cfg(run_dir))
    kill_midway(ref, "cams", run_dir, lambda: any(killed.glob("*.npz")))
    assert 0 < len(list(killed.glob("*.npz"))) < len(TRAIN + VAL)
    assert main(ref.argv("cams", run_dir)) == 0
    assert files(cams).keys() == files(ref.dir / "cams").keys()
    assert load_manifest(cams)["hash"] == load_manifest(ref.dir / "cams")["hash"]
    for image_id in TRAIN + VAL:
        with np.load(cams / f"{image_id}.npz") as got, \
                np.load(ref.dir / "cams" / f"{image_id}.npz") as want:
            assert got.files == want.files
            for key in want.files:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{image_id} {key}")


def test_pseudo_killed_midway_resumes_to_byte_identical_masks(ref, tmp_path):
    """The masks of a killed and resumed run, made in other processes, equal the reference's
    byte for byte: same config, same machine, same pseudo-masks."""
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls", "cams", "calibrate"])
    pseudo, killed = run_dir / "pseudo", staged("pseudo", ref.cfg(run_dir))
    kill_midway(ref, "pseudo", run_dir, lambda: any(killed.glob("*.png")))
    assert 0 < len(list(killed.glob("*.png"))) < len(TRAIN + VAL)
    assert main(ref.argv("pseudo", run_dir)) == 0
    assert files(pseudo).keys() == files(ref.dir / "pseudo").keys()
    for image_id in TRAIN + VAL:
        name = f"{image_id}.png"
        assert (pseudo / name).read_bytes() == (ref.dir / "pseudo" / name).read_bytes(), name


def test_manifests_record_package_versions_and_commit(ref):
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.strip()
    for stage in ("data", "train-cls", "cams", "calibrate", "pseudo"):
        manifest = load_manifest(stage_folder(stage, ref.cfg(ref.dir)))
        assert manifest["git_commit"] == commit, stage
        assert manifest["packages"]["torch"] == torch.__version__.split("+")[0]
        assert manifest["packages"]["numpy"] == np.__version__


# ---- bad input -------------------------------------------------------------------------------

def test_cams_skips_bad_images_lists_them_and_resumes_once_fixed(ref, tmp_path, capsys):
    data = copy_data(ref, tmp_path / "data")
    images, masks = data / "JPEGImages", data / "SegmentationClass"
    whole = (images / "train_00003.png").read_bytes()
    (images / "train_00003.png").write_bytes(whole[:len(whole) // 2])  # truncated
    save_mask(masks / "train_00004.png", np.zeros((32, 32), np.uint8))  # a negative: valid
    rgb = np.asarray(Image.open(images / "train_00005.png"))
    Image.fromarray(rgb).convert("RGBA").save(images / "train_00005.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(images / "train_00006.png")  # 16 bit
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls"], models=True)
    cams = run_dir / "cams"

    assert main(ref.argv("cams", run_dir, data)) == 2
    lines = error_lines(capsys)
    assert lines[0] == ("error: cams: skipped bad images and wrote every other one; fix them or "
                        "drop them from the split list, then rerun (1 image):")
    [truncated] = lines[1:]
    assert truncated.startswith(f"{images / 'train_00003.png'}: cannot read image (")
    staging = staged("cams", ref.cfg(run_dir, data))
    written = files(staging)
    assert sorted(written) == sorted([STARTED, *(f"{i}.npz" for i in TRAIN + VAL if i != "train_00003")])
    assert load_cams(staging / "train_00004.npz", ref.cfg(run_dir, data).cam)[1].tolist() == []

    (images / "train_00003.png").write_bytes(whole)
    assert main(ref.argv("cams", run_dir, data)) == 0
    assert load_manifest(cams)["metrics"]["written_now"] == 1
    now = files(cams)
    assert {name: now[name] for name in written if name != STARTED} == \
        {name: stat for name, stat in written.items() if name != STARTED}  # earlier files untouched
    assert now.keys() == files(ref.dir / "cams").keys()


def test_pseudo_skips_unreadable_and_missing_images(ref, tmp_path, capsys):
    data = copy_data(ref, tmp_path / "data")
    images = data / "JPEGImages"
    (images / "train_00002.png").write_bytes(b"not an image at all")
    (images / "val_00001.png").unlink()
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls", "cams", "calibrate"])
    pseudo = staged("pseudo", ref.cfg(run_dir, data))

    assert main(ref.argv("pseudo", run_dir, data)) == 2
    lines = error_lines(capsys)
    assert lines[0].startswith("error: pseudo: skipped bad images and wrote every other one")
    unreadable, missing = sorted(lines[1:])
    assert missing == f"{images / 'val_00001'}.*: image not found"
    assert unreadable.startswith(f"{images / 'train_00002.png'}: cannot read image (cannot identify")
    good = [i for i in TRAIN + VAL if i not in ("train_00002", "val_00001")]
    assert sorted(p.stem for p in pseudo.glob("*.png")) == good
    for image_id in good:
        name = f"{image_id}.png"
        assert (pseudo / name).read_bytes() == (ref.dir / "pseudo" / name).read_bytes()
    assert (pseudo / STARTED).is_file() and not (run_dir / "pseudo").exists()  # downstream waits


@pytest.mark.parametrize("stage", ["eval-cams", "eval-pseudo"])
def test_evaluation_skips_masks_of_another_size_or_out_of_range_labels(ref, tmp_path, capsys, stage):
    data = copy_data(ref, tmp_path / "data")
    masks = data / "SegmentationClass"
    save_mask(masks / "train_00001.png", read_mask(masks / "train_00001.png")[:30])
    labels = read_mask(masks / "train_00007.png")
    labels[:2, :2] = 9  # the class list names 3 classes
    save_mask(masks / "train_00007.png", labels)
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls", "cams", "calibrate", "pseudo"])

    assert main(ref.argv(stage, run_dir, data)) == 2
    lines = error_lines(capsys)
    assert lines[0].startswith(f"error: {stage}: skipped bad images")
    assert lines[1:] == [
        f"{masks / 'train_00001.png'}: mask size 32x30 differs from its image's 32x32",
        (f"{masks / 'train_00007.png'}: label ids [9] out of range (0..3 and 255: "
         f"{data / 'classes.txt'} names 3 classes)")]
    assert not stage_folder(stage, ref.cfg(run_dir, data)).exists()
    assert sorted(p.name for p in staged(stage, ref.cfg(run_dir, data)).iterdir()) == [STARTED]  # no results


def test_training_refuses_labels_the_class_list_does_not_cover(ref, tmp_path, capsys):
    """A class list that does not match the masks: train-cls lists every bad mask and starts
    nothing (an image without labels is a negative, not a bad mask)."""
    data = copy_data(ref, tmp_path / "data")
    (data / "classes.txt").write_text("background\nsquare\ndisc\n")  # the masks also hold cross (3)
    masks = data / "SegmentationClass"
    crosses = [i for i in TRAIN if 3 in np.unique(read_mask(masks / f"{i}.png"))]
    save_mask(masks / "train_00000.png", np.full((32, 32), 255, np.uint8))  # ignore only: no labels
    run_dir = copy_run(ref, tmp_path / "run", ["data"])

    assert main(ref.argv("train-cls", run_dir, data)) == 2
    lines = error_lines(capsys)
    assert lines[0] == (f"error: {data}: split 'train' has invalid image-level labels "
                        f"({len(lines) - 1} images):")
    expected = {f"{masks / f'{i}.png'}: label ids [3] out of range (0..2 and 255: "
                 f"{data / 'classes.txt'} names 2 classes)" for i in crosses if i != "train_00000"}
    assert len(crosses) >= 2 and set(lines[1:]) == expected
    assert not (run_dir / "classifier").exists()
    assert sorted(p.name for p in staged("train-cls", ref.cfg(run_dir, data)).iterdir()) == [STARTED]


def test_segmenter_refuses_to_train_on_a_mask_of_another_size(ref, tmp_path, capsys):
    data = copy_data(ref, tmp_path / "data")
    mask = data / "SegmentationClass" / "train_00009.png"
    save_mask(mask, np.pad(read_mask(mask), ((0, 4), (0, 0))))
    run_dir = copy_run(ref, tmp_path / "run", ["data"])

    assert main(ref.argv("train-seg-gt", run_dir, data)) == 2
    assert error_lines(capsys)[1:] == [f"{mask}: mask size 32x36 differs from its image's 32x32"]
    assert not (run_dir / "segmenter-gt").exists()
    assert sorted(p.name for p in staged("train-seg-gt", ref.cfg(run_dir, data)).iterdir()) == [STARTED]


def test_eval_seg_skips_bad_images_and_keeps_the_other_predictions(ref, tmp_path, capsys):
    data = copy_data(ref, tmp_path / "data")
    image = data / "JPEGImages" / "val_00003.png"
    image.write_bytes(b"")
    mask = data / "SegmentationClass" / "val_00005.png"
    save_mask(mask, read_mask(mask)[:, :31])
    run_dir = copy_run(ref, tmp_path / "run", ["data"])
    segmenter = run_dir / "segmenter"  # untrained: the test is about the files, not the scores
    staging = prepare(segmenter, "untrained")
    save_checkpoint(staging / "model.pt", {
        "model": build_segmenter("unet", "resnet18", 4, [8] * 5).state_dict(), "arch": "unet",
        "encoder": "resnet18", "decoder_channels": [8] * 5, "labels": "pseudo",
        "class_names": ["square", "disc", "cross"]})
    finish(segmenter, staging, {"hash": "untrained"})

    assert main(ref.argv("eval-seg", run_dir, data)) == 2
    unreadable, wrong_size = error_lines(capsys)[1:]
    assert unreadable.startswith(f"{image}: cannot read image (")
    assert wrong_size == f"{mask}: mask size 31x32 differs from its image's 32x32"
    predictions = staged("eval-seg", ref.cfg(run_dir, data)) / "predictions"
    assert sorted(p.stem for p in predictions.glob("*.png")) == [i for i in VAL if i != "val_00003"]
    assert not (predictions.parent / "results.json").exists() and not (run_dir / "eval" / "seg").exists()


# ---- checkpoints -----------------------------------------------------------------------------

@pytest.mark.parametrize("override, problem", [
    ("data.class_names=[cat,dog,bird]",
     "class_names ['square', 'disc', 'cross'] (this run's config: ['cat', 'dog', 'bird'])"),
    ("cls.arch=resnet34", "arch 'resnet18' (this run's config: 'resnet34')"),
])
def test_classifier_made_for_other_classes_or_arch_is_refused(ref, tmp_path, capsys, override, problem):
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls"], models=True)
    assert main(ref.argv("cams", run_dir, extra=(override,))) == 2
    model = run_dir / "classifier" / "model.pt"
    assert error_lines(capsys) == [(f"error: {model}: made for {problem}; retrain it or point "
                                    f"run_dir at the run it belongs to")]
    assert not list((run_dir / "cams").glob("*.npz"))


class RunsCode:
    """Unpickling this calls `Path.touch` on a file: proof that code ran."""

    def __init__(self, witness: Path):
        self.witness = witness

    def __reduce__(self):
        return (Path.touch, (self.witness,))


def test_classifier_that_would_run_code_is_refused_by_the_stage(ref, tmp_path, capsys):
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls"])
    model = run_dir / "classifier" / "model.pt"
    witness = tmp_path / "code-ran"
    torch.save({"model": RunsCode(witness), "arch": "resnet18"}, model)
    assert main(ref.argv("cams", run_dir)) == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"error: {model}: not a loadable checkpoint (")
    assert not witness.exists()


def test_segmenter_made_for_another_architecture_is_refused(ref, tmp_path):
    folder = tmp_path / "segmenter"
    save_checkpoint(folder / "model.pt", {"model": {}, "arch": "unet", "encoder": "resnet18",
                                          "decoder_channels": [8] * 5, "labels": "pseudo",
                                          "class_names": ["square", "disc", "cross"]})
    cfg = ref.cfg(tmp_path / "run", extra=("seg.arch=fpn", "seg.encoder=resnet34"))
    with pytest.raises(StageError) as error:
        load_segmenter(folder / "model.pt", cfg)
    assert str(error.value) == (f"{folder / 'model.pt'}: made for arch 'unet' (this run's config: "
                                f"'fpn'); encoder 'resnet18' (this run's config: 'resnet34'); "
                                f"retrain it or point run_dir at the run it belongs to")


# ---- a config change reruns what depends on it, and nothing else ------------------------------

def run_every_stage(cfg) -> dict[str, dict]:
    """Execute every stage the config runs, in order; returns each one's manifest, as left on disk."""
    names = [stage for stage in STAGES if enabled(stage, cfg)]
    for stage in names:
        execute(stage, cfg)
    return {stage: load_manifest(stage_folder(stage, cfg)) for stage in names}


def test_changed_pseudo_key_reruns_pseudo_and_downstream_only(ref, tmp_path):
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls", "cams", "calibrate", "pseudo"], models=True)
    before = run_every_stage(ref.cfg(run_dir))
    cams = files(run_dir / "cams")

    assert run_every_stage(ref.cfg(run_dir, extra=("pseudo.workers=2",))) == before  # changes no output

    after = run_every_stage(ref.cfg(run_dir, extra=("pseudo.fg_threshold_high=0.6",)))
    reran = {stage for stage in before if after[stage] != before[stage]}
    assert reran == {"pseudo", "eval-pseudo", "eval-calibration", "train-seg", "eval-seg", "report"}
    assert files(run_dir / "cams") == cams
    assert read_json(run_dir / "pseudo" / MANIFEST)["config"]["pseudo"]["fg_threshold_high"] == 0.6


def test_an_evaluation_key_reruns_the_evaluations_only(ref, tmp_path):
    """seg.eval_flip is eval-seg's: the segmenters keep their manifests (none is trained again)
    and every eval-seg stage runs again."""
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls", "cams", "calibrate", "pseudo"], models=True)
    before = run_every_stage(ref.cfg(run_dir))
    after = run_every_stage(ref.cfg(run_dir, extra=("seg.eval_flip=true",)))
    assert {stage for stage in before if after[stage] != before[stage]} == {"eval-seg", "eval-seg-gt", "report"}
    assert after["eval-seg"]["config"]["seg"]["eval_flip"] is True


def test_the_segmenters_crop_size_leaves_the_affinity_head_alone(ref, tmp_path):
    run_dir = copy_run(ref, tmp_path / "run", ["data", "train-cls", "cams", "calibrate", "pseudo"], models=True)
    walk = ("affinity.enabled=true", "affinity.epochs=1", "affinity.batch_size=8", "affinity.crop_size=32",
            "affinity.train_radius=3", "affinity.exp_times=1")
    before = run_every_stage(ref.cfg(run_dir, extra=walk))
    after = run_every_stage(ref.cfg(run_dir, extra=(*walk, "seg.crop_size=0")))
    assert {stage for stage in before if after[stage] != before[stage]} == {
        "train-seg", "eval-seg", "train-seg-gt", "eval-seg-gt", "report"}

