"""Skip-if-done covers the dataset: an edited image, mask, split list, class list or labels CSV
makes the stages that read it run again, while an untouched dataset keeps every stage up to date.

On the shapes dataset of test_reliability (16 + 8 images of 32 px) read as a VOC folder, and on
the same images as a labelled image folder.
"""
from __future__ import annotations

import builtins
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from test_reliability import Runs

from pipeline.data.images import read_mask, save_mask
from pipeline.runs import load_manifest
from pipeline.stages import execute, stage_folder, stage_hash


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    made = Runs(tmp_path_factory.mktemp("fingerprint"))
    execute("data", made.cfg(made.dir))
    return made


@pytest.fixture
def voc(built, tmp_path):
    """A VOC folder of its own (a copy of the built one, times kept) and the config reading it."""
    root = shutil.copytree(built.data, tmp_path / "voc")
    cfg = built.cfg(tmp_path / "run", root, ("data.name=voc",))
    execute("data", cfg)
    return root, cfg


def later(path) -> None:
    """Move the file's modification time on, as any edit does."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))


def edit_image(root):
    path = root / "JPEGImages" / "train_00002.png"
    pixels = np.asarray(Image.open(path)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(path)
    later(path)


def edit_mask(root):
    path = root / "SegmentationClass" / "val_00001.png"
    mask = read_mask(path)
    mask[:2, :2] = 0
    save_mask(path, mask)
    later(path)


def drop_from_split_list(root):
    path = root / "ImageSets" / "Segmentation" / "train.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))


def rename_class(root):
    path = root / "classes.txt"
    path.write_text(path.read_text().replace("disc", "circle"))


def touch_image(root):
    later(root / "JPEGImages" / "val_00004.png")  # same bytes: a stat-only fingerprint sees it too


@pytest.mark.parametrize("edit", [edit_image, edit_mask, drop_from_split_list, rename_class, touch_image])
def test_each_edit_of_a_voc_folder_changes_every_stages_hash(voc, edit):
    root, cfg = voc
    hashes = {stage: stage_hash(stage, cfg) for stage in ("data", "train-cls")}
    assert {stage: stage_hash(stage, cfg) for stage in hashes} == hashes  # stable while untouched
    edit(root)
    assert all(stage_hash(stage, cfg) != before for stage, before in hashes.items())


def test_a_file_no_split_lists_changes_nothing(voc):
    root, cfg = voc
    before = stage_hash("train-cls", cfg)
    shutil.copy(root / "JPEGImages" / "train_00000.png", root / "JPEGImages" / "extra.png")
    (root / "notes.txt").write_text("not part of the dataset\n")
    assert stage_hash("train-cls", cfg) == before


def test_edited_mask_reruns_the_finished_stages_that_read_it(voc):
    root, cfg = voc
    first = {stage: execute(stage, cfg) for stage in ("data", "train-cls")}
    assert {stage: execute(stage, cfg) for stage in first} == first  # up to date: skipped
    edit_mask(root)
    again = {stage: execute(stage, cfg) for stage in first}
    assert all(again[stage]["hash"] != first[stage]["hash"] for stage in first)
    assert again["train-cls"]["hash"] == stage_hash("train-cls", cfg)


@pytest.fixture
def labelled_folder(built, tmp_path):
    """The same images as a labelled image folder: labels.csv and classes.txt, no masks."""
    root = shutil.copytree(built.data / "JPEGImages", tmp_path / "photos")
    (root / "classes.txt").write_text("background\nsquare\ndisc\ncross\n")
    rows = [f"{path.name},{'square;disc' if index % 2 else 'cross'}"
            for index, path in enumerate(sorted(root.glob("*.png")))]
    (root / "labels.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    cfg = built.cfg(tmp_path / "run", root, ("data.name=folder", "cls.split=train", "cam.splits=[train]",
                                             "pseudo.splits=[train]", "eval.split=train"))
    return root, cfg


def test_changed_label_in_the_csv_reruns_what_reads_it(labelled_folder):
    root, cfg = labelled_folder
    first = execute("data", cfg)
    assert execute("data", cfg) == first
    classifier = stage_hash("train-cls", cfg)
    csv = root / "labels.csv"
    csv.write_text(csv.read_text().replace("train_00003.png,square;disc", "train_00003.png,square"))
    again = execute("data", cfg)
    assert again["hash"] != first["hash"] and again == load_manifest(stage_folder("data", cfg))
    assert stage_hash("train-cls", cfg) != classifier


def test_built_dataset_is_judged_by_its_settings_and_record(built, tmp_path):
    """A built dataset's data stage: what its settings make, whatever its files' times; the
    stages that read its files see them."""
    cfg = built.cfg(built.dir)
    hashes = {stage: stage_hash(stage, cfg) for stage in ("data", "train-cls")}
    image = built.data / "JPEGImages" / "val_00004.png"
    times = (image.stat().st_atime_ns, image.stat().st_mtime_ns)
    touch_image(built.data)
    try:
        assert stage_hash("data", cfg) == hashes["data"]
        assert stage_hash("train-cls", cfg) != hashes["train-cls"]
    finally:
        os.utime(image, ns=times)


def test_fingerprint_opens_no_image(voc, monkeypatch):
    """Only file metadata: no image or mask is opened, however many there are."""
    from pipeline.data.fingerprint import config_splits, fingerprint
    root, cfg = voc
    opened = builtins.open

    def no_images(path, *args, **kwargs):
        assert os.fspath(path).endswith(".txt"), f"opened {path}"
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_images)
    monkeypatch.setattr(io, "open", no_images)
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: pytest.fail("an image was opened"))
    assert len(fingerprint(cfg.data, config_splits(cfg))) == 16


def test_one_command_running_every_stage_reads_the_dataset_once(voc):
    from pipeline.data.fingerprint import config_splits, fingerprint, remembering
    root, cfg = voc
    splits = config_splits(cfg)
    with remembering():
        first = fingerprint(cfg.data, splits)
        edit_mask(root)
        assert fingerprint(cfg.data, splits) == first  # the dataset as `all` first read it
    assert fingerprint(cfg.data, splits) != first  # the next command sees the edit
