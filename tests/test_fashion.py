"""The built-in "Fashion scenes" benchmark, built from tiny fake Fashion-MNIST IDX files."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.data import fashion
from pipeline.data.fashion import (FASHION_CLASSES, FashionMnistMissing, SceneSpec, build,
                                   compose_scene, load_fashion_mnist, load_photos, scene_rng)
from pipeline.data.images import DataError, read_mask
from pipeline.data.voc import VocDataset

PER_CLASS = 3
GREY_MAX = 150  # brightest fake item pixel
# The brightest pasted pixel: texture = (0.2 + 0.8 * grey / 255) * tint * 255 with tint <= 1.
TEXTURE_MAX = int((0.2 + 0.8 * GREY_MAX / 255) * 255)  # 171


def fake_item(class_index: int, variant: int, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 grey item on black: a thick square ring (a hole in the middle) with a grey ramp."""
    item = np.zeros((28, 28), np.uint8)
    outer = 10 + (class_index + variant) % 3  # half-size 10..12
    thick = 6 + variant % 2
    top, bottom = 14 - outer, 14 + outer
    ring = np.zeros((28, 28), bool)
    ring[top:bottom, top:bottom] = True
    ring[top + thick:bottom - thick, top + thick:bottom - thick] = False
    if class_index % 2:  # odd classes get a bar across the hole's top: still a hole below it
        ring[top + thick:top + thick + 2, top:bottom] = True
    ramp = np.linspace(60, GREY_MAX, 28)[None, :] + rng.integers(-5, 6, (28, 28))
    item[ring] = np.clip(ramp, 60, GREY_MAX)[ring]
    return item


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x00000803 if array.ndim == 3 else 0x00000801
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion-mnist")
    rng = np.random.default_rng(0)
    arrays = {}
    for split, (images_name, labels_name) in fashion.IDX_FILES.items():
        images, labels = [], []
        for variant in range(PER_CLASS):
            for c in range(10):
                images.append(fake_item(c, variant, rng))
                labels.append(c)
        arrays[split] = (np.stack(images), np.array(labels, np.uint8))
        write_idx(folder / f"{images_name}.gz", arrays[split][0])
        write_idx(folder / f"{labels_name}.gz", arrays[split][1])
    return folder, arrays


def spec(seed=0, size=48, items=(1, 3), classes=tuple(FASHION_CLASSES)):
    return SceneSpec(seed, size, classes, items[0], items[1], 20, 30)


@pytest.fixture(scope="module")
def photos():
    return load_photos()


def items_by_class(arrays, split, classes=FASHION_CLASSES):
    images, labels = arrays[split]
    return [images[labels == FASHION_CLASSES.index(name)] for name in classes]


def compose_with_band_free(monkeypatch, rng, scene_spec, photos, items):
    """compose_scene, also returning the label map before the 255 band was drawn on it."""
    seen = {}
    original = fashion._with_boundary_band

    def spy(labels):
        seen["labels"] = labels.copy()
        return original(labels)

    monkeypatch.setattr(fashion, "_with_boundary_band", spy)
    image, mask = compose_scene(rng, scene_spec, photos, items)
    monkeypatch.setattr(fashion, "_with_boundary_band", original)
    return image, mask, seen["labels"]


def expected_band(labels: np.ndarray) -> np.ndarray:
    """255 on labelled pixels with a 4-neighbour (inside the image) of another label."""
    differs = np.zeros(labels.shape, bool)
    differs[1:, :] |= labels[1:, :] != labels[:-1, :]
    differs[:-1, :] |= labels[:-1, :] != labels[1:, :]
    differs[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    differs[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    out = labels.copy()
    out[differs & (labels > 0)] = 255
    return out


# ------------------------------------------------------------------------------------- tests

def test_fake_idx_files_read_back(fake_mnist):
    folder, arrays = fake_mnist
    for split in ("train", "val"):
        images, labels = load_fashion_mnist(folder, split)
        assert images.shape == (10 * PER_CLASS, 28, 28) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, arrays[split][0])
        np.testing.assert_array_equal(labels, arrays[split][1])


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(FashionMnistMissing) as info:
        load_fashion_mnist(tmp_path, "train")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "FASHION_MNIST_DIR" in message
    assert "train-images-idx3-ubyte" in message
    with pytest.raises(FashionMnistMissing):
        build(tmp_path / "out", spec(), tmp_path, 2, 1, 1, workers=1)
    assert not (tmp_path / "out").exists()  # fails before writing anything


def test_item_texture_and_mask(fake_mnist):
    _, arrays = fake_mnist
    grey28 = arrays["train"][0][0]
    for fill_holes in (True, False):
        rng = np.random.default_rng(5)
        texture, mask = fashion._item(rng, grey28, 24, fill_holes)
        tint = np.random.default_rng(5).uniform(0.35, 1.0, size=3)  # the item's one random draw
        grey = np.asarray(Image.fromarray(grey28).resize((24, 24), Image.Resampling.BILINEAR))
        assert texture.shape == (24, 24, 3) and texture.dtype == np.uint8
        np.testing.assert_array_equal(
            texture, ((0.2 + 0.8 * grey[..., None] / 255.0) * tint * 255.0).astype(np.uint8))
        above = grey > fashion.ITEM_THRESHOLD
        if fill_holes:
            np.testing.assert_array_equal(mask, ndimage.binary_fill_holes(above))
            assert mask.sum() > above.sum()  # the ring's hole is filled
        else:
            np.testing.assert_array_equal(mask, above)  # sandals keep their gaps


def test_scene_masks_band_and_labels(fake_mnist, photos, monkeypatch):
    _, arrays = fake_mnist
    items = items_by_class(arrays, "train")
    for index in range(12):
        image, mask, band_free = compose_with_band_free(
            monkeypatch, scene_rng(3, "train", index), spec(3), photos, items)
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        assert mask.shape == (48, 48) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, *range(1, 11), 255}
        assert set(np.unique(band_free)) <= set(range(0, 11))
        assert (band_free > 0).any(), f"scene {index} has no item"
        # The 255 band is exactly the labelled pixels on a border between labels.
        np.testing.assert_array_equal(mask, expected_band(band_free))
        band = mask == 255
        assert not (band & (band_free == 0)).any()
        # Every band pixel has a 4-neighbour of another label in the band-free map.
        padded = np.pad(band_free.astype(int), 1, constant_values=-1)
        neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        other = np.zeros(mask.shape, bool)
        for n in neighbours:
            other |= (n != -1) & (n != band_free)
        assert (other[band]).all()
        # The band leaves every pasted class visible, so image-level labels are the pasted classes.
        np.testing.assert_array_equal(np.setdiff1d(np.unique(mask), [0, 255]),
                                      np.setdiff1d(np.unique(band_free), [0]))


def test_items_are_pasted_opaquely_and_sandal_keeps_its_hole(fake_mnist, photos, monkeypatch):
    """On a white background, blending by grey level would leave item pixels brighter than any
    texture can be; an opaque paste keeps every item pixel at or below TEXTURE_MAX."""
    _, arrays = fake_mnist
    monkeypatch.setattr(fashion, "_background",
                        lambda rng, photos, size: np.full((size, size, 3), 255, np.uint8))
    items = items_by_class(arrays, "train")
    seen_sandal = seen_other = 0
    for index in range(30):
        image, mask, band_free = compose_with_band_free(
            monkeypatch, scene_rng(1, "train", index), spec(1, items=(1, 1)), photos, items)
        item = band_free > 0
        assert (image[item] <= TEXTURE_MAX).all(), f"scene {index}: background shows through"
        assert (image[~item] == 255).all(), f"scene {index}: item pixels outside the mask"
        (class_id,) = np.unique(band_free[item])
        filled = ndimage.binary_fill_holes(item)
        if FASHION_CLASSES[class_id - 1] == "sandal":
            seen_sandal += 1
            assert filled.sum() > item.sum()  # the hole is background ...
            assert (image[filled & ~item] == 255).all()  # ... and shows the background
        else:
            seen_other += 1
            np.testing.assert_array_equal(filled, item)  # the hole belongs to the item
    assert seen_sandal and seen_other


def thin_item() -> np.ndarray:
    """A one-pixel line: at 20-30 px it is at most two pixels wide, so all of it is edge."""
    item = np.zeros((28, 28), np.uint8)
    item[4:24, 14] = 200
    return item[None]


def test_a_scene_whose_items_all_vanish_under_the_band_is_drawn_again(fake_mnist, photos):
    _, arrays = fake_mnist
    thin, thick = thin_item(), items_by_class(arrays, "train", ["trouser"])[0]
    scene_spec = SceneSpec(0, 48, ("sandal", "trouser"), 1, 1, 20, 30)
    vanished = 0
    for index in range(20):
        first_image, first_mask = fashion._draw_scene(scene_rng(0, "train", index), scene_spec,
                                                      photos, [thin, thick])
        image, mask = compose_scene(scene_rng(0, "train", index), scene_spec, photos, [thin, thick])
        # Its one item is the thick trouser (label 2), the thin one never leaves a labelled pixel.
        assert set(np.unique(mask)) == {0, 2, 255}
        if set(np.unique(first_mask)) <= {0, 255}:
            vanished += 1
            assert (first_mask == 255).any()  # the thin item was pasted, all of it band
        else:  # a first draw that kept its label is the scene itself
            np.testing.assert_array_equal(mask, first_mask)
            np.testing.assert_array_equal(image, first_image)
    assert 0 < vanished < 20


def test_items_too_thin_for_any_label_stop_the_build_in_one_line(photos):
    scene_spec = SceneSpec(0, 48, ("sandal",), 1, 1, 20, 30)
    with pytest.raises(DataError, match=r"^items of 20-30 px: in 100 draws of a 48 px scene every item was all boundary band"):
        compose_scene(scene_rng(0, "train", 0), scene_spec, photos, [thin_item()])


@pytest.fixture(scope="module")
def built(fake_mnist, tmp_path_factory):
    folder, _ = fake_mnist
    roots = {}
    for name, seed, workers in (("one", 7, 1), ("two", 7, 2), ("other", 8, 1)):
        root = tmp_path_factory.mktemp(f"scenes-{name}")
        info = build(root, spec(seed), folder, n_pool=8, n_train=5, n_val=4, workers=workers)
        roots[name] = (root, info)
    return roots


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_build_writes_voc_layout(built):
    root, info = built["one"]
    assert info["sizes"] == {"train_aug": 8, "train": 5, "val": 4}
    assert info["seed"] == 7 and info["image_size"] == 48
    names = files(root)
    assert sum(n.startswith("JPEGImages/") for n in names) == 12
    assert sum(n.startswith("SegmentationClass/") for n in names) == 12
    assert (root / "classes.txt").read_text().split() == ["background", *FASHION_CLASSES]
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    pool = (root / "ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert train == pool[:5] and len(pool) == 8
    assert not [n for n in names if Path(n).name.startswith(".")]  # no temporary files


def test_build_is_deterministic_whatever_the_workers(built):
    one, two, other = files(built["one"][0]), files(built["two"][0]), files(built["other"][0])
    assert one == two  # byte-identical images and masks with 1 and 2 worker processes
    assert one.keys() == other.keys()
    differing = [n for n in one if n.startswith("JPEGImages/") and one[n] != other[n]]
    assert len(differing) >= 10  # another seed: other scenes


def test_built_scenes_match_in_process_composition(built, fake_mnist, photos, monkeypatch):
    root, _ = built["one"]
    _, arrays = fake_mnist
    for split in ("train_aug", "val"):
        voc = VocDataset(root, split)
        source = "val" if split == "val" else "train"
        items = items_by_class(arrays, source)
        for index, image_id in enumerate(voc.ids):
            image, mask, band_free = compose_with_band_free(
                monkeypatch, scene_rng(7, source, index), spec(7), photos, items)
            np.testing.assert_array_equal(voc.image(image_id), image)  # PNG: lossless
            written = read_mask(root / "SegmentationClass" / f"{image_id}.png")
            np.testing.assert_array_equal(written, mask)
            assert set(np.unique(written)) <= {0, *range(1, 11), 255}
            # Image-level labels derived from the written mask are the classes pasted.
            pasted = np.setdiff1d(np.unique(band_free), [0]) - 1
            np.testing.assert_array_equal(voc.labels(image_id), pasted)
            assert len(pasted) >= 1


def test_val_scenes_use_test_items(fake_mnist):
    folder, arrays = fake_mnist
    fashion._init_worker(spec().classes, str(folder))
    try:
        for split in ("train", "val"):
            for c in range(10):
                expected = arrays[split][0][arrays[split][1] == c]
                np.testing.assert_array_equal(fashion._WORKER["items"][split][c], expected)
    finally:
        fashion._WORKER.clear()


def small_scenes(tmp_path: Path) -> list[str]:
    """Overrides for a data stage that builds a handful of 48 px scenes under `tmp_path`."""
    return [f"run_dir={tmp_path}/run", f"data.root={tmp_path}/scenes", "data.image_size=48",
            "data.n_train_pool=6", "data.n_train=4", "data.n_val=3", "data.item_size_min=20",
            "data.item_size_max=30", "data.n_items=5"]


def test_data_stage_builds_fashion_scenes(fake_mnist, tmp_path, monkeypatch):
    from pipeline.config import load_config
    from pipeline.data.images import DataError
    from pipeline.stages import execute

    folder, _ = fake_mnist
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    overrides = [*small_scenes(tmp_path), "cls.split=train"]
    missing = load_config(None, overrides + [f"data.fashion_mnist_dir={tmp_path}/nothing"])
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        execute("data", missing)
    assert not (tmp_path / "scenes").exists()
    cfg = load_config(None, overrides + [f"data.fashion_mnist_dir={folder}"])
    manifest = execute("data", cfg)
    assert manifest["metrics"]["sizes"] == {"train": 4, "val": 3}
    assert manifest["metrics"]["classes"] == FASHION_CLASSES
    assert len(VocDataset(tmp_path / "scenes", "train_aug")) == 6


@pytest.mark.parametrize("overrides, named", [
    (["data.item_size_max=80"], "data.item_size_min=20, data.item_size_max=80, data.image_size=48"),
    (["data.items_min=4"], "data.items_min=4, data.items_max=3"),
    (["data.item_canvas=6"], "data.item_canvas=6"),
    (["data.n_train=7"], "data.n_train=7, data.n_train_pool=6"),
    (["data.classes=[tshirt,jacket]"], "data.classes"),
])
def test_data_stage_refuses_scenes_that_cannot_be_drawn(fake_mnist, tmp_path, overrides, named):
    from pipeline.config import load_config
    from pipeline.stages import execute

    folder, _ = fake_mnist
    with pytest.raises(DataError) as info:
        execute("data", load_config(None, [*small_scenes(tmp_path), f"data.fashion_mnist_dir={folder}",
                                           *overrides]))
    assert str(info.value).startswith(f"{named}: ") and "\n" not in str(info.value)
    assert not (tmp_path / "scenes").exists()
