"""The one on-disk format: PASCAL VOC layout.

    root/JPEGImages/<id>.jpg|png
    root/SegmentationClass/<id>.png          palette PNG, 0 = background, 255 = ignore
    root/ImageSets/Segmentation/<split>.txt  one id per line
    root/classes.txt                         optional: "background" then one class name per line

Image-level labels are the class ids present in an image's mask. Builders write this layout
with `make_layout`, `write_index` and `build_once`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.data.images import IGNORE, IMAGE_SUFFIXES, DataError, read_mask
from pipeline.data.split import Split, read_text

DATASET_RECORD = "dataset.json"  # written by camseg's builders: what was built, from which settings
VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


class VocDataset(Split):
    """One split of a VOC-layout folder."""

    def __init__(self, root: str | Path, split: str, class_names: list[str] | None = None,
                 image_dir: str = "JPEGImages", mask_dir: str = "SegmentationClass", max_side: int = 0):
        super().__init__(root, split, class_names, max_side)
        self.image_dir = self.root / image_dir
        self.mask_dir = self.root / mask_dir
        list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"{list_file}: split list not found")
        self.ids = [line.split()[0] for line in read_text(list_file).splitlines() if line.strip()]
        if not self.ids:
            raise DataError(f"{list_file}: split '{split}' is empty")

    def image_path(self, image_id: str) -> Path:
        for suffix in IMAGE_SUFFIXES:
            path = self.image_dir / f"{image_id}{suffix}"
            if path.is_file():
                return path
        raise DataError(f"{self.image_dir / image_id}.*: image not found")

    def mask_path(self, image_id: str) -> Path:
        return self.mask_dir / f"{image_id}.png"

    def mask(self, image_id: str) -> np.ndarray:
        """The mask file's label ids (the file's size), checked against the class list."""
        path = self.mask_path(image_id)
        if not path.is_file():
            raise DataError(f"{path}: mask not found")
        mask = read_mask(path)
        bad = np.setdiff1d(np.unique(mask), [*range(self.num_classes + 1), IGNORE])
        if bad.size:
            raise DataError(f"{path}: label ids {bad.tolist()} out of range (0..{self.num_classes} "
                            f"and {IGNORE}: {self.class_source} names {self.num_classes} classes)")
        return mask

    def labels(self, image_id: str) -> np.ndarray:
        """Foreground class indices 0..C-1 present in the image (class id minus one); none for a
        photo of background only, a negative."""
        present = np.unique(self.mask(image_id))
        present = present[(present > 0) & (present != IGNORE)]
        return present.astype(np.int64) - 1


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
