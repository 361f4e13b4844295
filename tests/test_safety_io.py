"""Outputs that never lose a user's data, and bad input files that fail in one line naming them.

One tiny classifier (shapes, 32 px) serves the tests of the label command."""
from __future__ import annotations

import csv
import hashlib
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data.fashion import check_settings
from pipeline.data.folder import FolderDataset, as_text_cell, from_text_cell, read_labels_csv
from pipeline.data.images import PALETTE, DataError, image_size, read_image, read_mask
from pipeline.data.outputs import output_name
from pipeline.data.shapes import SHAPES, shapes_scene
from pipeline.data.voc import VocDataset
from pipeline.runs import read_json
from pipeline.stages import execute


def tree(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Every file and folder under `root` (but `skip`) with a hash of each file's bytes."""
    found = {}
    for path in sorted(Path(root).rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        found[path.relative_to(root).as_posix()] = (
            "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def one_line_error(capsys) -> str:
    """The error the command line ended with (after any progress bars), which is one line."""
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "Traceback" not in err, err
    line = ("error: " + err.split("error: ")[1]).strip()
    assert len(line.splitlines()) == 1, err
    return line


def scene(seed: int, height: int = 32, width: int = 32) -> tuple[np.ndarray, list[str]]:
    """A shapes scene resized to height x width, and the names of the classes it shows."""
    image, labels = shapes_scene(np.random.default_rng([11, seed]), 48)
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.NEAREST))
    labels = np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))
    return image, [SHAPES[c - 1] for c in np.unique(labels) if c > 0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety-run")
    torch.manual_seed(0)
    cfg = load_config(None, [f"run_dir={tmp}/run", "data.name=shapes", f"data.root={tmp}/data",
                             "data.image_size=32", "data.n_train=16", "data.n_val=8", "cls.split=train",
                             "cls.crop_size=32", "cls.epochs=1", "cls.batch_size=8",
                             "cam.layers=[layer3,layer4]", "pseudo.workers=1"])
    execute("data", cfg)
    execute("train-cls", cfg)
    return tmp / "run"


def label(run_dir: Path, images: Path, out: Path, *extra) -> int:
    return main(["label", "--images", str(images), "--run", str(run_dir), "--out", str(out), *extra])


def explain(images: Path, out: Path) -> int:
    """`python -m pipeline explain` in this process: a random ResNet-18, one method, one layer."""
    return main(["explain", "--images", str(images), "--out", str(out), "--model", "resnet18", "--size", "32",
                 "--top-k", "1", "--methods", "gradcam", "--layers", "layer4.1"])


def stage(name: str, tmp: Path, overrides: list[str]) -> int:
    """`python -m pipeline <name>` in this process, with a config of `overrides` only."""
    config = tmp / "config.yaml"
    config.write_text("threads: 1\n")
    return main([name, "--config", str(config), *overrides])


def one_split(split: str) -> list[str]:
    """Overrides that make every stage read `split` alone."""
    keys = ("cls.split", "cls.val_split", "eval.split", "seg.split", "seg.val_split")
    return [*(f"{key}={split}" for key in keys), f"cam.splits=[{split}]", f"pseudo.splits=[{split}]"]


def write_labels(path: Path, rows: list[tuple[str, list[str]]]) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([name, ";".join(classes)] for name, classes in rows)
    return path


# ----------------------------------------------------------------------------- output names

HASHED = re.compile(r"~[0-9a-f]{12}$")  # how a changed name ends

TRICKY_IDS = ["img1", "kitchen/0001", "猫/写真", "../x", "../../x", "/etc/passwd", "/x", "x", "./x",
              "a//b", "a/./b", "a/../b", ".", "..", "", "/", "a\\b", "a\x00b", "a\nb", "~x",
              "x" * 300, "x" * 301, "/".join(["d"] * 600), "\udcff", "x~0123456789ab"]


def test_output_names_stay_inside_the_folder_and_never_collide(tmp_path):
    # An id that is already a plain relative path keeps its name, so outputs mirror the input folders
    assert [output_name(i) for i in ("img1", "kitchen/0001", "猫/写真", "~x")] == [
        "img1", "kitchen/0001", "猫/写真", "~x"]
    # What changed ids become, named as ids themselves, must not meet them either
    ids = TRICKY_IDS + [output_name(i) for i in TRICKY_IDS]
    names = [output_name(i) for i in ids]
    assert names == [output_name(i) for i in ids]  # deterministic
    assert len(set(names)) == len(set(ids))
    folder = (tmp_path / "out").resolve()
    for image_id, name in zip(ids, names):
        parts = name.split("/")
        assert "" not in parts and "." not in parts and ".." not in parts, (image_id, name)
        assert not re.search(r"[\x00-\x1f\\]", name), (image_id, name)
        assert all(len(part.encode("utf-8", "surrogatepass")) <= 200 for part in parts)
        assert folder in (folder / f"{name}.png").resolve().parents, (image_id, name)
        assert name == image_id or (HASHED.search(name) and "/" not in name), (image_id, name)


@pytest.fixture(scope="module")
def escaping_folder(tmp_path_factory):
    """A folder dataset of six images whose CSV reaches two of them by `../..` and one by an
    absolute path: (tmp, the data root, the CSV's image names)."""
    tmp = tmp_path_factory.mktemp("escaping")
    root = tmp / "data" / "set"
    (root / "sub").mkdir(parents=True)
    (tmp / "elsewhere").mkdir()
    names = ["a.png", "sub/b.png", "../../up1.png", "../../up2.png", str(tmp / "elsewhere" / "abs.png"),
             "c.png"]
    rows = []
    for index, name in enumerate(names):
        image, classes = scene(index)
        Image.fromarray(image).save(root / name)
        rows.append((name, classes))
    (root / "classes.txt").write_text("background\n" + "\n".join(SHAPES) + "\n")
    write_labels(root / "labels.csv", rows)
    return tmp, root, names


def test_stages_write_per_image_files_inside_their_folders_whatever_the_csv_holds(escaping_folder):
    tmp, root, names = escaping_folder
    run_dir = tmp / "run"
    before = tree(tmp)
    cfg = load_config(None, [
        f"run_dir={run_dir}", "data.name=folder", f"data.root={root}", "data.val_fraction=0.5",
        "cls.split=train", "cls.val_split=val", "cls.crop_size=32", "cls.epochs=1", "cls.batch_size=3",
        "cam.layers=[layer4]", "cam.splits=[train,val]", "pseudo.splits=[train,val]", "pseudo.workers=1"])
    for stage in ("data", "train-cls", "cams", "calibrate", "pseudo"):
        execute(stage, cfg)
    assert tree(tmp, skip=run_dir) == before  # nothing outside the run folder changed
    for folder, suffix in (("cams", ".npz"), ("pseudo", ".png")):
        written = {p.relative_to(run_dir / folder).as_posix() for p in (run_dir / folder).rglob("*")
                   if p.is_file() and p.name != "manifest.json"}
        escaped = {name for name in written if HASHED.search(name.removesuffix(suffix))}
        assert written - escaped == {f"a{suffix}", f"c{suffix}", f"sub/b{suffix}"}
        # the others: each one file name, the path's names joined by `_`, then a hash
        assert sorted(name.split("~")[0] for name in escaped) == sorted(
            ["up1", "up2", str(tmp / "elsewhere" / "abs").lstrip("/").replace("/", "_")])


def test_label_writes_inside_out_whatever_the_csv_holds(run, tmp_path):
    photos = tmp_path / "a" / "photos"
    photos.mkdir(parents=True)
    rows = []
    for index, name in enumerate(["in.png", "../../up.png", str(tmp_path / "abs.png")]):
        image, classes = scene(index)
        Image.fromarray(image).save(photos / name)
        rows.append((name, classes))
    csv_file = write_labels(tmp_path / "labels.csv", rows)
    out = tmp_path / "out"
    before = tree(tmp_path)
    assert label(run, photos, out, "--labels", str(csv_file)) == 0
    assert tree(tmp_path, skip=out) == before  # ../../up.png would have become a mask over up.png
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    stems = {p.stem for p in (out / "masks").iterdir()}
    assert len(stems) == 3 and "in" in stems
    assert written == {"labels.csv", "summary.json", "settings.json",
                       *(f"{kind}/{stem}{suffix}" for stem in stems
                         for kind, suffix in (("masks", ".png"), ("overlays", ".png"), ("records", ".json")))}
    # labels.csv names each image by its path from the image folder, which reads back to the image
    listed = [row[0] for row in csv.reader(open(out / "labels.csv"))][1:]
    assert listed == ["in.png", "../../up.png", os.path.relpath(tmp_path / "abs.png", photos)]
    assert [item.path.resolve() for item in read_labels_csv(out / "labels.csv", photos, SHAPES)] == [
        (photos / "in.png").resolve(), (tmp_path / "up.png").resolve(), (tmp_path / "abs.png").resolve()]


def test_label_refuses_an_out_folder_that_is_or_holds_its_inputs(run, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(scene(0)[0]).save(photos / "masks.png")
    before = tree(tmp_path)
    for out in (photos, tmp_path):
        assert label(run, photos, out) == 2
        assert f"--out {out}: is or holds the input " in one_line_error(capsys)
    assert tree(tmp_path) == before


def test_explain_refuses_an_out_folder_that_is_or_holds_its_inputs(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(scene(0)[0]).save(photos / "cat.png")
    before = tree(tmp_path)
    for images, out in ((photos, photos), (photos, tmp_path), (photos / "cat.png", photos)):
        assert explain(images, out) == 2
        assert f"--out {out}: is or holds the input {images}" in one_line_error(capsys)
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------- class lists

def voc_folder(root: Path, classes: str | bytes) -> Path:
    """A VOC folder with one listed image and the given classes.txt (nothing else is read on opening)."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    (root / "classes.txt").write_bytes(classes if isinstance(classes, bytes) else classes.encode())
    return root


def class_lines(count: int) -> str:
    return "\n".join(["background", *(f"class{i}" for i in range(count))]) + "\n"


def test_up_to_254_classes_fit_a_mask_and_more_are_one_line(tmp_path, capsys):
    assert VocDataset(voc_folder(tmp_path / "fits", class_lines(254)), "train").num_classes == 254
    root = voc_folder(tmp_path / "over", class_lines(255))
    with pytest.raises(DataError) as error:
        VocDataset(root, "train")
    assert str(error.value) == (f"{root / 'classes.txt'}: 255 classes, more than the 254 that uint8 "
                                f"masks hold beside background (0) and ignore (255)")
    with pytest.raises(DataError, match=r"^data\.class_names: 100000 classes, more than the 254 "):
        VocDataset(root, "train", [f"c{i}" for i in range(100_000)])
    (root / "labels.csv").write_text("x.png,class0\n")
    with pytest.raises(DataError, match=re.escape(f"{root / 'classes.txt'}: 255 classes")):
        FolderDataset(root, "all")
    # through the command line: one line and exit 2, before any stage works
    assert stage("data", tmp_path, [f"run_dir={tmp_path}/run", "data.name=voc", f"data.root={root}",
                                    *one_split("train")]) == 2
    assert "255 classes, more than the 254" in one_line_error(capsys)


def test_classes_file_with_a_byte_order_mark_reads_as_without(tmp_path):
    root = voc_folder(tmp_path / "bom", b"\xef\xbb\xbf" + class_lines(3).encode())
    assert VocDataset(root, "train").class_names == ["class0", "class1", "class2"]


@pytest.mark.parametrize("content, problem", [
    (b"background\ncat\n\xff\xfedog\n", "not UTF-8 text (invalid start byte at byte 15)"),
    (b"background\ncat\ndog\ncat\n", "class 'cat' is listed twice"),
])
def test_bad_classes_file_is_one_line_naming_it(tmp_path, content, problem):
    root = voc_folder(tmp_path / "bad", content)
    with pytest.raises(DataError) as error:
        VocDataset(root, "train")
    assert str(error.value) == f"{root / 'classes.txt'}: {problem}"


def test_a_class_named_twice_in_the_config_is_one_line_naming_the_key(tmp_path):
    root = voc_folder(tmp_path / "voc", class_lines(2))
    with pytest.raises(DataError) as error:
        VocDataset(root, "train", ["cat", "dog", "cat"])
    assert str(error.value) == "data.class_names: class 'cat' is listed twice"
    settings = {"classes": ["bag", "boot", "bag"], "items_min": 1, "items_max": 2, "item_size_min": 8,
                "item_size_max": 16, "image_size": 32, "n_items": 0, "item_canvas": 32, "n_train": 1,
                "n_val": 1, "n_train_pool": 1}
    with pytest.raises(DataError) as error:
        check_settings(settings, "data.")
    assert str(error.value) == "data.classes: class 'bag' is listed twice"


# ----------------------------------------------------------------------------- decompression bombs

def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims width x height grey pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.fixture
def bomb_folder(tmp_path):
    """Two shapes images and, between them, a PNG claiming 30000 x 30000 pixels."""
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for index, name in enumerate(["a.png", "b-bomb.png", "c.png"]):
        image, classes = scene(index)
        Image.fromarray(image).save(folder / name)
        rows.append((name, classes))
    (folder / "b-bomb.png").write_bytes(png_claiming(30000, 30000))
    return folder, rows


def test_a_decompression_bomb_is_a_data_error_naming_it(bomb_folder):
    bomb = bomb_folder[0] / "b-bomb.png"
    for read in (read_image, image_size, read_mask):
        with pytest.raises(DataError) as error:
            read(bomb)
        assert str(error.value).startswith(f"{bomb}: cannot read ")
        assert "900000000 pixels" in str(error.value) and len(str(error.value).splitlines()) == 1


def test_label_and_explain_skip_a_decompression_bomb(run, bomb_folder, tmp_path, caplog):
    folder, _ = bomb_folder
    assert label(run, folder, tmp_path / "labelled") == 1
    summary = read_json(tmp_path / "labelled" / "summary.json")
    assert [f["image"] for f in summary["failed"]] == ["b-bomb.png"] and summary["written"] == 2
    assert explain(folder, tmp_path / "explained") == 1
    summary = read_json(tmp_path / "explained" / "summary.json")
    assert [f["image"] for f in summary["failed"]] == ["b-bomb.png"] and summary["written"] == 2
    assert caplog.text.count(f"skipped: {folder / 'b-bomb.png'}: cannot read image") == 2


def test_training_on_a_decompression_bomb_is_one_line_and_exit_2(bomb_folder, tmp_path, capsys):
    folder, rows = bomb_folder
    (folder / "classes.txt").write_text("background\n" + "\n".join(SHAPES) + "\n")
    write_labels(folder / "labels.csv", rows)
    run_dir = tmp_path / "run"
    overrides = [f"run_dir={run_dir}", "data.name=folder", f"data.root={folder}", "cls.crop_size=32",
                 "cls.epochs=1", "cls.batch_size=3", *one_split("all")]
    assert stage("data", tmp_path, overrides) == 0
    capsys.readouterr()
    assert stage("train-cls", tmp_path, overrides) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"error: {folder / 'b-bomb.png'}: cannot read image (")
    assert not (run_dir / "classifier" / "model.pt").exists()


# ----------------------------------------------------------------------------- EXIF orientation

COLOURS = np.array(PALETTE, np.uint8).reshape(256, 3)


def save_with_orientation(pixels: np.ndarray, path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), lossless=True)  # lossless: WebP's


# How each orientation stores a picture that viewers show upright (EXIF 2.3, tag 0x0112).
STORED = {1: lambda shown: shown, 3: lambda shown: np.rot90(shown, 2),
          6: lambda shown: np.rot90(shown, 1), 8: lambda shown: np.rot90(shown, -1)}


def read_as_shown(tmp_path: Path, suffix: str, orientation: int) -> None:
    shown = np.random.default_rng(orientation).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    path = tmp_path / f"photo{suffix}"
    save_with_orientation(np.ascontiguousarray(STORED[orientation](shown)), path, orientation)
    np.testing.assert_array_equal(read_image(path), shown)
    assert image_size(path) == (24, 40)


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("suffix", [".png", ".webp"])
def test_images_read_as_viewers_show_them(tmp_path, orientation, suffix):
    read_as_shown(tmp_path, suffix, orientation)


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_unturned_images_and_tiffs_which_pillow_turns_itself_are_turned_once(tmp_path, orientation):
    read_as_shown(tmp_path, ".tif", orientation)
    read_as_shown(tmp_path, ".png", 1)


def test_a_phone_photo_is_labelled_as_viewers_show_it(run, tmp_path):
    """Orientation 6 (a phone held upright): the mask has the shown size and is the mask of the
    same pixels stored upright; the overlay blends it over the shown picture."""
    shown, classes = scene(5, height=32, width=48)
    folder = tmp_path / "photos"
    folder.mkdir()
    jpeg_path = folder / "phone.jpg"
    save_with_orientation(np.ascontiguousarray(np.rot90(shown, 1)), jpeg_path, 6)
    stored = np.asarray(Image.open(jpeg_path).convert("RGB"))  # decoded as stored, not turned
    assert stored.shape == (48, 32, 3)
    photo = np.ascontiguousarray(np.rot90(stored, -1))  # turned as a viewer turns it
    Image.fromarray(photo).save(folder / "upright.png")
    csv_file = write_labels(tmp_path / "labels.csv", [("upright.png", classes), ("phone.jpg", classes)])
    out = tmp_path / "out"
    assert label(run, folder, out, "--labels", str(csv_file)) == 0
    mask = read_mask(out / "masks" / "phone.png")
    assert mask.shape == (32, 48)
    np.testing.assert_array_equal(mask, read_mask(out / "masks" / "upright.png"))
    overlay = np.asarray(Image.open(out / "overlays" / "phone.png"))
    blended = np.rint(0.5 * photo + 0.5 * COLOURS[mask]).astype(np.uint8)
    np.testing.assert_array_equal(overlay, np.where((mask != 0)[..., None], blended, photo))


# ----------------------------------------------------------------------------- CSV cells

@pytest.mark.parametrize("cell, written", [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"),
    ("\rx", "'\rx"), ("'=1", "''=1"), ("'x", "'x"), ("a=1", "a=1"), ("", ""), ("cat;dog", "cat;dog"),
])
def test_cells_that_start_like_a_formula_are_written_as_text_and_read_back(cell, written):
    assert as_text_cell(cell) == written
    assert from_text_cell(written) == cell


def test_label_writes_no_formula_into_labels_csv(run, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    names = ["=1+1.png", "+cmd.png", "-2.png", "@SUM(A1).png", "plain.png"]
    rows = []
    for index, name in enumerate(names):
        image, classes = scene(index)
        Image.fromarray(image).save(folder / name)
        rows.append((name, classes))
    csv_file = write_labels(tmp_path / "labels.csv", rows)
    out = tmp_path / "out"
    assert label(run, folder, out, "--labels", str(csv_file)) == 0
    table = list(csv.reader(open(out / "labels.csv")))
    assert [row[0] for row in table[1:]] == [
        "'=1+1.png", "'+cmd.png", "'-2.png", "'@SUM(A1).png", "plain.png"]
    assert all(cell[:1] not in "=+-@" for row in table for cell in row)
    assert [item.path for item in read_labels_csv(out / "labels.csv", folder, SHAPES)] == [
        folder / name for name in names]
