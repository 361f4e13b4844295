"""The second benchmark, "Fashion wide": built from fake Fashion-MNIST IDX files into a VOC folder
and read back the way a user's folder is read (data.name voc)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image
from test_fashion import fake_item, files, write_idx  # the built-in benchmark's fakes

from pipeline.config import DataConfig, load_config
from pipeline.data import fashion, fashion_wide, open_split
from pipeline.data.images import IGNORE, DataError, read_mask

SIZES = {"n_train_pool": 10, "n_train": 4, "n_val": 5, "n_items": 8}
HEIGHT = 26  # rows 1..26 of every fake item


# Each wide class's fake item is a bar of its own width; the classes it leaves out get the widest.
WIDTHS = {name: 4 + 3 * k for k, name in enumerate(fashion_wide.CLASSES)}


def bar_item(class_index: int) -> np.ndarray:
    """A fake item: a solid bar 26 rows high and as wide as WIDTHS says, so that the shape of a
    lone item's mask tells its class without asking the builder."""
    item = np.zeros((28, 28), np.uint8)
    width = WIDTHS.get(fashion.FASHION_CLASSES[class_index], 27)
    left = 14 - width // 2
    item[1:1 + HEIGHT, left:left + width] = 150
    return item


@pytest.fixture(scope="module")
def bar_mnist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion-mnist-bars")
    images = np.stack([bar_item(c) for _ in range(2) for c in range(10)])
    labels = np.array([c for _ in range(2) for c in range(10)], np.uint8)
    for images_name, labels_name in fashion.IDX_FILES.values():
        write_idx(folder / f"{images_name}.gz", images)
        write_idx(folder / f"{labels_name}.gz", labels)
    return folder


@pytest.fixture(scope="module")
def built(bar_mnist, tmp_path_factory):
    roots = {}
    for name, seed, workers in (("one", 3, 1), ("two", 3, 2), ("other", 4, 1)):
        root = tmp_path_factory.mktemp(f"wide-{name}") / "fashion-wide"
        roots[name] = (root, fashion_wide.build_wide(root, bar_mnist, workers=workers, seed=seed, **SIZES))
    return roots


def voc_config(root) -> DataConfig:
    return DataConfig(name="voc", root=str(root))


# ------------------------------------------------------------------------------------- tests

def test_default_benchmark_scenes_are_unchanged():
    """The built-in benchmark's first scenes of each split, digested before the composition was
    shared with Fashion wide: the default photos, the spec and the composition still give them."""
    rng = np.random.default_rng(0)
    images = np.stack([fake_item(c, v, rng) for v in range(3) for c in range(10)])
    labels = np.array([c for v in range(3) for c in range(10)])
    classes = ("tshirt", "trouser", "dress", "sandal", "bag", "boot")
    items = [images[labels == fashion.FASHION_CLASSES.index(name)] for name in classes]
    spec = fashion.SceneSpec(0, 64, classes, 1, 3, 24, 40)
    photos = fashion.load_photos()
    digest = hashlib.sha256()
    for split, scene_spec in (("train", spec), ("val", spec), ("items", fashion.item_spec(spec, 32))):
        for index in range(4):
            image, mask = fashion.compose_scene(fashion.scene_rng(0, split, index), scene_spec, photos, items)
            digest.update(image.tobytes())
            digest.update(mask.tobytes())
    assert digest.hexdigest() == "48faa1f4316fcff1d2f9b057507df083e7d07188eee961659328d019c6f51c9b"


def test_photos_are_real_files_other_than_the_default_benchmarks():
    paths = fashion_wide.photo_paths()
    assert len(paths) >= 4
    default = {path.resolve() for path in fashion.default_photo_paths()}
    for path in paths:
        assert path.is_file(), path
        assert path.resolve() not in default
        assert path.name != "motorcycle_right.png"  # the default's motorcycle_left, seen from beside it
        with Image.open(path) as image:
            assert min(image.size) >= 300  # crops of a quarter to half the short side cover 96 px
    assert len({p.read_bytes() for p in paths}) == len(paths)


def test_build_reads_as_a_voc_folder(built):
    root, info = built["one"]
    assert info["name"] == "fashion-wide" and info["image_size"] == 96
    assert (root / "classes.txt").read_text().split() == ["background", *fashion_wide.CLASSES]
    expected = {"train_aug": 10, "train": 4, "val": 5, "items": 8}
    assert info["sizes"] == expected
    num_classes = len(fashion_wide.CLASSES)
    splits = {}
    for split, count in expected.items():
        voc = open_split(voc_config(root), split)  # the reader a user's folder goes through
        assert voc.class_names == list(fashion_wide.CLASSES) and len(voc) == count
        side = 48 if split == "items" else 96
        matrix = voc.label_matrix()
        for row, image_id in enumerate(voc.ids):
            assert voc.image(image_id).shape == (side, side, 3)
            mask = read_mask(root / "SegmentationClass" / f"{image_id}.png")
            assert mask.shape == (side, side)
            ids = set(np.unique(mask).tolist())
            assert ids <= {0, *range(1, num_classes + 1), IGNORE}
            present = sorted(ids - {0, IGNORE})
            assert present, f"{image_id}: no item"
            np.testing.assert_array_equal(np.flatnonzero(matrix[row]), np.array(present) - 1)
        splits[split] = voc.ids
    assert splits["train"] == splits["train_aug"][:4]
    assert not set(splits["train_aug"]) & set(splits["val"])


def test_scenes_hold_items_of_other_sizes_than_the_default(built):
    root, _ = built["one"]
    voc = open_split(voc_config(root), "train_aug")
    counts, heights = [], []
    for image_id in voc.ids:
        mask = voc.mask(image_id)
        counts.append(len(set(np.unique(mask).tolist()) - {0, IGNORE}))
        rows = np.flatnonzero((mask > 0).any(1))
        heights.append(rows[-1] - rows[0] + 1)
    assert max(counts) <= 4
    # A bar fills 26/28 of its item's height: items of 16-72 px give masks up to 72 px high.
    assert max(heights) <= 96 and max(heights) > 40


def test_single_item_scenes_show_an_item_of_their_own_class(built):
    """A lone bar's width over its height names its Fashion-MNIST class: the label in the mask must
    be that class's position in classes.txt."""
    root, _ = built["one"]
    voc = open_split(voc_config(root), "items")
    ratios = {name: width / HEIGHT for name, width in WIDTHS.items()}
    for image_id in voc.ids:
        mask = voc.mask(image_id)
        (label,) = set(np.unique(mask).tolist()) - {0, IGNORE}
        rows, cols = np.flatnonzero((mask > 0).any(1)), np.flatnonzero((mask > 0).any(0))
        ratio = (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1)
        nearest = min(ratios, key=lambda c: abs(ratios[c] - ratio))
        assert nearest == fashion_wide.CLASSES[label - 1], image_id


def test_build_is_deterministic(built):
    one, two, other = files(built["one"][0]), files(built["two"][0]), files(built["other"][0])
    assert one == two  # byte-identical with 1 and 2 worker processes
    assert one.keys() == other.keys()
    assert sum(one[n] != other[n] for n in one if n.startswith("JPEGImages/")) >= 20  # another seed


def test_rerun_keeps_the_build_and_a_foreign_folder_is_refused(built, bar_mnist, tmp_path):
    root, info = built["one"]
    before = files(root)
    assert fashion_wide.build_wide(root, bar_mnist, workers=1, seed=3, **SIZES) == info
    assert files(root) == before
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match="not built by camseg"):
        fashion_wide.build_wide(tmp_path / "mine", bar_mnist, workers=1, **SIZES)
    with pytest.raises(DataError, match="exceeds n_train_pool"):
        fashion_wide.build_wide(tmp_path / "x", bar_mnist, workers=1, n_train_pool=2, n_train=3)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_wide.build_wide(tmp_path / "x", tmp_path, workers=1, **SIZES)
    assert not (tmp_path / "x").exists()


def test_command_line_builds_and_the_config_reads_it(bar_mnist, tmp_path, capsys):
    from pipeline.stages import execute

    out = tmp_path / "wide"
    args = ["--out", str(out), "--fashion-mnist-dir", str(bar_mnist), "--workers", "1",
            "--n-train-pool", "6", "--n-train", "3", "--n-val", "2", "--n-items", "4",
            "--image-size", "80", "--item-size-min", "20", "--item-size-max", "60",
            "--classes", "bag", "boot", "trouser"]
    assert fashion_wide.main(args) == 0
    assert "train_aug 6, train 3, val 2, items 4" in capsys.readouterr().out
    cfg = load_config("configs/fashion-wide.yaml", [f"data.root={out}", f"run_dir={tmp_path}/run"])
    assert cfg.data.name == "voc" and not cfg.data.class_names
    assert load_config("configs/fashion-wide.yaml").data.root == "data/fashion-wide"
    manifest = execute("data", cfg)  # the data stage of a VOC folder: it checks every split
    assert manifest["metrics"]["classes"] == ["bag", "boot", "trouser"]
    assert manifest["metrics"]["sizes"] == {"items": 4, "train": 3, "train_aug": 6, "val": 2}
    assert open_split(cfg.data, "val").image_shape("val_000000") == (80, 80)
