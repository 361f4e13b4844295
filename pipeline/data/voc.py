"""The one on-disk format: PASCAL VOC layout.

    root/JPEGImages/<id>.jpg|png
    root/SegmentationClass/<id>.png          palette PNG, 0 = background, 255 = ignore
    root/ImageSets/Segmentation/<split>.txt  one id per line
    root/classes.txt                         optional: "background" then one class name per line

Image-level labels are the class ids present in an image's mask.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.runs import write_with

IGNORE = 255
DATASET_RECORD = "dataset.json"  # written by camseg's builders: what was built, from which settings
VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """Bad input data; the message is one line naming the file and the problem."""


class BadImagesError(DataError):
    """Several bad images at once: a summary line, then one line per bad file."""


class BadImages:
    """Collects the DataErrors of single images, so that a pass over a split goes on past a bad
    image and then names every bad file at once instead of stopping at the first:

        bad = BadImages(f"{list_file}: invalid labels")
        for image_id in ids:
            with bad.skip():
                ...
        bad.raise_if_any()
    """

    def __init__(self, summary: str):
        self.summary = summary
        self.problems: list[str] = []

    @contextmanager
    def skip(self):
        try:
            yield
        except DataError as error:
            self.problems.append(str(error))

    def add(self, problem: str) -> None:
        """Record a problem reported from elsewhere (a worker process)."""
        self.problems.append(problem)

    def raise_if_any(self) -> None:
        if self.problems:
            count = f"{len(self.problems)} image{'s' if len(self.problems) > 1 else ''}"
            raise BadImagesError("\n".join([f"{self.summary} ({count}):", *self.problems]))


def skipping(stage: str) -> BadImages:
    """The collector of a per-image stage. The stage writes every good image and then fails, so
    that it has no manifest: downstream stages wait, and a rerun resumes with just the fixed images."""
    return BadImages(f"{stage}: skipped bad images and wrote every other one; "
                     f"fix them or drop them from the split list, then rerun")


def palette() -> list[int]:
    """The VOC colour map: label i gets the colour built from the bits of i."""
    colours = []
    for label in range(256):
        r = g = b = 0
        value = label
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours.extend((r, g, b))
    return colours


PALETTE = palette()


def save_mask(path: Path, labels: np.ndarray) -> None:
    """Write a uint8 label map as a VOC palette PNG, atomically."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(PALETTE)
    write_with(Path(path), lambda tmp: image.save(tmp, format="PNG"))


def to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    """Any PIL image (grey, RGBA, palette, 16-bit) as uint8 RGB [H, W, 3]."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        grey = np.clip(values / top * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise DataError(f"{path}: unsupported image mode {image.mode}")
    return array


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image, path)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: cannot read image ({error})") from None


def read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise DataError(f"{path}: mask must be a palette or grey PNG of label ids, "
                                f"not mode {image.mode}")
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise DataError(f"{path}: cannot read mask ({error})") from None


class VocDataset:
    """One split of a VOC-layout folder."""

    def __init__(self, root: str | Path, split: str, class_names: list[str] | None = None,
                 image_dir: str = "JPEGImages", mask_dir: str = "SegmentationClass"):
        self.root = Path(root)
        self.split = split
        self.image_dir = self.root / image_dir
        self.mask_dir = self.root / mask_dir
        self.class_names = list(class_names) if class_names else read_class_names(self.root)
        self.class_source = "data.class_names" if class_names else str(self.root / "classes.txt")
        list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"{list_file}: split list not found")
        self.ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise DataError(f"{list_file}: split '{split}' is empty")

    @property
    def num_classes(self) -> int:
        """Foreground classes; label ids run 1..num_classes."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        for suffix in IMAGE_SUFFIXES:
            path = self.image_dir / f"{image_id}{suffix}"
            if path.is_file():
                return path
        raise DataError(f"{self.image_dir / image_id}.*: image not found")

    def image(self, image_id: str) -> np.ndarray:
        return read_image(self.image_path(image_id))

    def image_shape(self, image_id: str) -> tuple[int, int]:
        """(height, width) from the image file's header, without decoding its pixels."""
        path = self.image_path(image_id)
        try:
            with Image.open(path) as image:
                return image.height, image.width
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            raise DataError(f"{path}: cannot read image ({error})") from None

    def mask_path(self, image_id: str) -> Path:
        return self.mask_dir / f"{image_id}.png"

    def mask(self, image_id: str) -> np.ndarray:
        path = self.mask_path(image_id)
        if not path.is_file():
            raise DataError(f"{path}: mask not found")
        mask = read_mask(path)
        bad = np.setdiff1d(np.unique(mask), [*range(self.num_classes + 1), IGNORE])
        if bad.size:
            raise DataError(f"{path}: label ids {bad.tolist()} out of range (0..{self.num_classes} "
                            f"and {IGNORE}: {self.class_source} names {self.num_classes} classes)")
        return mask

    def checked_mask(self, image_id: str, image_shape: tuple[int, ...]) -> np.ndarray:
        """The ground-truth mask, which must have the size `image_shape` of its image."""
        return check_fits(self.mask_path(image_id), self.mask(image_id), image_shape)

    def labels(self, image_id: str) -> np.ndarray:
        """Foreground class indices 0..C-1 present in the image (class id minus one)."""
        present = np.unique(self.mask(image_id))
        present = present[(present > 0) & (present != IGNORE)]
        if present.size == 0:
            raise DataError(f"{self.mask_path(image_id)}: image has no labels (mask is all background)")
        return present.astype(np.int64) - 1

    def label_matrix(self) -> np.ndarray:
        """Multi-hot [N, C] image-level labels for the whole split; raises naming every bad mask."""
        matrix = np.zeros((len(self.ids), self.num_classes), np.float32)
        bad = BadImages(f"{self.root}: split '{self.split}' has invalid image-level labels")
        for row, image_id in enumerate(self.ids):
            with bad.skip():
                matrix[row, self.labels(image_id)] = 1.0
        bad.raise_if_any()
        return matrix


def check_fits(path: Path, mask: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """`mask` (read from `path`) itself, if its size is `image_shape`, its image's."""
    if mask.shape != tuple(image_shape[:2]):
        raise DataError(f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} "
                        f"differs from its image's {image_shape[1]}x{image_shape[0]}")
    return mask


def make_layout(root: Path) -> None:
    """Create the VOC folders a builder writes into."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (Path(root) / sub).mkdir(parents=True, exist_ok=True)


def write_index(root: Path, lists: dict[str, list[str]], class_names: list[str]) -> dict[str, int]:
    """Write each split's id list and `classes.txt`; returns the split sizes."""
    for name, members in lists.items():
        (Path(root) / "ImageSets/Segmentation" / f"{name}.txt").write_text("\n".join(members) + "\n")
    (Path(root) / "classes.txt").write_text("\n".join(["background", *class_names]) + "\n")
    return {name: len(members) for name, members in lists.items()}


def build_once(root: Path, build_hash: str, make: Callable[[Path], dict]) -> dict:
    """Build a dataset into `root` with `make(folder)` unless `root` already holds a build with
    this `build_hash`. The build goes to a temporary sibling renamed when complete, so a killed
    build leaves no half-written `root`; `dataset.json` records the hash and `make`'s description.
    A folder camseg did not build (one without the record) is never overwritten."""
    root = Path(root)
    record = root / DATASET_RECORD
    if record.is_file():
        info = json.loads(record.read_text())
        if info.get("build_hash") == build_hash:
            return info
    elif root.exists():
        raise DataError(f"{root}: exists but was not built by camseg; refusing to overwrite it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        info = {**make(tmp), "build_hash": build_hash}
        (tmp / DATASET_RECORD).write_text(json.dumps(info, indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def read_class_names(root: Path) -> list[str]:
    path = Path(root) / "classes.txt"
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return names[1:] if names and names[0] == "background" else names
    raise DataError(f"{path}: no class list; write one or set data.class_names in the config")


def open_split(cfg_data, split: str) -> VocDataset:
    """The dataset split named in a config (a DataConfig)."""
    if cfg_data.name == "folder":
        from pipeline.data.folder import FolderDataset  # it builds on this module
        return FolderDataset(cfg_data.root, split, cfg_data.labels_csv, cfg_data.class_names or None,
                             cfg_data.val_fraction, cfg_data.seed)
    return VocDataset(cfg_data.root, split, cfg_data.class_names or None,
                      cfg_data.image_dir, cfg_data.mask_dir)
