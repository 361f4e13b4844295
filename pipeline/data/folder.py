"""A folder of images with image-level labels from a CSV: a training dataset without masks.

    <root>/labels.csv       image,labels            (header optional; labels separated by ';')
                            photos/cat1.jpg,cat;sofa
                            dog2,dog                (the image suffix may be left out)

Image paths are relative to `root`; an image's id is its path without the suffix. Class names
come from `data.class_names` or `<root>/classes.txt`, as for VOC, so a misspelt class is an error
rather than a new class. Splits: "all", and "val" / "train", a partition of it: the
ceil(val_fraction * N) images whose seeded hash of their id is smallest, so membership depends
neither on the CSV's row order nor, for images already listed, much on rows added later.
"""
from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.data.images import IMAGE_SUFFIXES, DataError, quoted
from pipeline.data.split import Split
from pipeline.runs import StageError

SPLITS = ("train", "val", "all")
# A cell starting so is a formula to a spreadsheet, which would run it on opening the file.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class LabelledImage(NamedTuple):
    id: str
    path: Path
    classes: np.ndarray | None  # foreground class indices 0..C-1; None: not known yet (label command)


def image_id(name: str) -> str:
    """A path relative to the image folder, without its image suffix."""
    path = Path(name)
    return path.with_suffix("").as_posix() if path.suffix.lower() in IMAGE_SUFFIXES else path.as_posix()


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system, a folder one may not look into
        return False


def find_image(root: Path, name: str) -> Path | None:
    """`root/name`, or `root/name.<suffix>` for the first image suffix that exists."""
    candidates = [root / name, *(root / f"{name}{suffix}" for suffix in IMAGE_SUFFIXES)]
    return next((path for path in candidates if _is_file(path)), None)


def check_unique_ids(items: list[LabelledImage], where: Path | str) -> None:
    """Refuse two images with one id: their outputs, named by the id, would overwrite each other."""
    seen: dict[str, Path] = {}
    for item in items:
        if item.id in seen:
            raise DataError(f"{where}: {seen[item.id]} and {item.path} would both be written as "
                            f"{item.id}.*")
        seen[item.id] = item.path


def folder_images(images_dir: Path) -> list[LabelledImage]:
    """Every image file directly in `images_dir`, sorted by name, with no classes yet."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    files = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{images_dir}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    items = [LabelledImage(image_id(path.name), path, None) for path in files]
    check_unique_ids(items, images_dir)
    return items


def as_text_cell(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text instead of running it: one that starts like a formula,
    after any quotes, gets one more leading `'` (OWASP's advice), which `from_text_cell` removes."""
    return f"'{cell}" if cell.lstrip("'").startswith(FORMULA_STARTS) else cell


def from_text_cell(cell: str) -> str:
    """The cell `as_text_cell` was given."""
    return cell[1:] if cell.startswith("'") and cell.lstrip("'").startswith(FORMULA_STARTS) else cell


def _cells(csv_path: Path) -> Iterator[tuple[int, str, str]]:
    """(line number, image, labels) of every non-blank row; a first row `image,labels` is a header."""
    columns = (0, 1)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets' BOM
            reader = csv.reader(handle)
            for row in reader:
                cells = [cell.strip() for cell in row]
                if not any(cells):
                    continue
                if reader.line_num == 1 and cells[0].lower() == "image":
                    header = [cell.lower() for cell in cells]
                    if "labels" not in header:
                        raise DataError(f"{csv_path}:1: header has no 'labels' column")
                    columns = (header.index("image"), header.index("labels"))
                    continue
                if len(cells) <= max(columns):
                    raise DataError(f"{csv_path}:{reader.line_num}: expected 'image,labels', "
                                    f"got {quoted(','.join(row))}")
                yield reader.line_num, from_text_cell(cells[columns[0]]), from_text_cell(cells[columns[1]])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{csv_path}: cannot read labels CSV ({error})") from None


def read_labels_csv(csv_path: Path, image_root: Path, class_names: list[str]) -> list[LabelledImage]:
    """Every row of a labels CSV, checked: the image exists and its labels are known classes; a row
    with an empty labels cell is a photo of no object (a negative)."""
    csv_path, image_root = Path(csv_path), Path(image_root)
    index = {name: i for i, name in enumerate(class_names)}
    rows: dict[str, LabelledImage] = {}
    for line, name, labels in _cells(csv_path):
        where = f"{csv_path}:{line}"
        names = [label.strip() for label in labels.split(";") if label.strip()]
        unknown = [label for label in names if label not in index]
        if unknown:
            raise DataError(f"{where}: unknown class {quoted(unknown[0])} "
                            f"(classes: {', '.join(class_names)})")
        path = find_image(image_root, name)
        if path is None:
            raise DataError(f"{where}: image {quoted(name)} not found in {image_root}")
        key = image_id(name)
        if key in rows:
            raise DataError(f"{where}: image {quoted(name)} is listed twice "
                            f"(as {quoted(rows[key].path.name)} before)")
        rows[key] = LabelledImage(key, path, np.array(sorted({index[label] for label in names}), np.int64))
    if not rows:
        raise DataError(f"{csv_path}: no labelled images")
    return list(rows.values())


def split_rows(rows: list[LabelledImage], split: str, val_fraction: float,
               seed: int) -> list[LabelledImage]:
    if split == "all":
        return rows
    rank = sorted(rows, key=lambda row: hashlib.sha256(f"{seed}:{row.id}".encode()).hexdigest())
    val = {row.id for row in rank[:math.ceil(val_fraction * len(rows))]}
    return [row for row in rows if (row.id in val) == (split == "val")]


class FolderDataset(Split):
    """One split of a folder of images labelled by a CSV: image-level labels, no masks."""

    def __init__(self, root: str | Path, split: str, labels_csv: str | Path = "",
                 class_names: list[str] | None = None, val_fraction: float = 0.1, seed: int = 0,
                 max_side: int = 0):
        super().__init__(root, split, class_names, max_side)
        self.labels_csv = Path(labels_csv) if labels_csv else self.root / "labels.csv"
        if split not in SPLITS:
            raise DataError(f"{self.labels_csv}: a folder dataset has splits {', '.join(SPLITS)}, "
                            f"not '{split}'")
        rows = split_rows(read_labels_csv(self.labels_csv, self.root, self.class_names), split,
                          val_fraction, seed)
        if not rows:
            raise DataError(f"{self.labels_csv}: split '{split}' is empty "
                            f"(data.val_fraction={val_fraction})")
        self.ids = [row.id for row in rows]
        self._rows = {row.id: row for row in rows}

    def image_path(self, image_id: str) -> Path:
        return self._rows[image_id].path

    def labels(self, image_id: str) -> np.ndarray:
        """Foreground class indices 0..C-1 listed for the image."""
        return self._rows[image_id].classes

    # Not a DataError: that would be one bad image to skip, and here no image has a mask.
    def mask_path(self, image_id: str) -> Path:
        raise self._no_masks()

    def mask(self, image_id: str) -> np.ndarray:
        raise self._no_masks()

    def _no_masks(self) -> StageError:
        return StageError(f"{self.labels_csv}: a folder dataset has image-level labels only, "
                          f"no masks to score or train against")
