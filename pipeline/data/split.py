"""What a stage reads of a dataset split, whichever reader gives it (`open_split` in
`pipeline.data` picks the reader a config names)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.data.images import (IGNORE, BadImages, DataError, check_fits, image_size, quoted, read_mask,
                                  read_sized_image, resized_mask, working_size)

# Masks are uint8: label ids 1..MAX_CLASSES, beside 0 (background) and IGNORE.
MAX_CLASSES = IGNORE - 1


def read_text(path: Path) -> str:
    """A UTF-8 text file (without the byte-order mark editors on Windows write), or one line saying
    why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None


def read_class_names(root: Path) -> list[str]:
    path = Path(root) / "classes.txt"
    if path.is_file():
        names = [line.strip() for line in read_text(path).splitlines() if line.strip()]
        return names[1:] if names and names[0] == "background" else names
    raise DataError(f"{path}: no class list; write one or set data.class_names in the config")


def check_class_names(names: list[str], source: str) -> None:
    """Refuse a class list a mask cannot hold, or one naming a class twice; `source` is the file or
    config key it came from."""
    if len(names) > MAX_CLASSES:
        raise DataError(f"{source}: {len(names)} classes, more than the {MAX_CLASSES} that uint8 masks "
                        f"hold beside background (0) and ignore ({IGNORE})")
    twice = [name for name, count in Counter(names).items() if count > 1]
    if twice:
        raise DataError(f"{source}: class {quoted(twice[0])} is listed twice")


class Split(ABC):
    """One split of a dataset: image ids in list order, class names, images, image-level labels
    and masks. A reader sets `ids` and says where an image is, which classes it shows and where
    its mask is (or that it has none).

    Images are worked on at their working size: the longer side at most `max_side` (0: the
    file's own size), so that memory and time follow the recipe's scale, not a camera's. Images,
    ground truth and the masks stages write are read at it; the masks stages write for people to
    keep have the file's size (`file_shape`)."""

    ids: list[str]

    def __init__(self, root: str | Path, split: str, class_names: list[str] | None, max_side: int = 0):
        self.root = Path(root)
        self.split = split
        self.max_side = max_side
        self._file_shapes: dict[str, tuple[int, int]] = {}  # training asks every step
        self.class_source = "data.class_names" if class_names else str(self.root / "classes.txt")
        self.class_names = list(class_names) if class_names else read_class_names(self.root)
        check_class_names(self.class_names, self.class_source)

    @abstractmethod
    def image_path(self, image_id: str) -> Path: ...

    @abstractmethod
    def labels(self, image_id: str) -> np.ndarray:
        """Foreground class indices 0..C-1 present in the image."""

    @abstractmethod
    def mask_path(self, image_id: str) -> Path: ...

    @abstractmethod
    def mask(self, image_id: str) -> np.ndarray:
        """The ground-truth label map at the file's size, checked against the class list."""

    @property
    def num_classes(self) -> int:
        """Foreground classes; label ids run 1..num_classes."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, image_id: str) -> np.ndarray:
        """uint8 RGB [H, W, 3] at the working size; its file's shape is remembered on the way."""
        image, self._file_shapes[image_id] = read_sized_image(self.image_path(image_id), self.max_side)
        return image

    def file_shape(self, image_id: str) -> tuple[int, int]:
        """(height, width) of the image file as viewers show it, from its header (read once, or
        remembered from reading the image)."""
        if image_id not in self._file_shapes:
            self._file_shapes[image_id] = image_size(self.image_path(image_id))
        return self._file_shapes[image_id]

    def image_shape(self, image_id: str) -> tuple[int, int]:
        """(height, width) at the working size, from the image file's header, without decoding its
        pixels."""
        return working_size(*self.file_shape(image_id), self.max_side)

    def _at_working_size(self, path: Path, mask: np.ndarray, image_id: str) -> np.ndarray:
        """`mask`, read from `path`, which must have the image file's size, at the working size."""
        return resized_mask(check_fits(path, mask, self.file_shape(image_id)), self.image_shape(image_id))

    def working_mask(self, image_id: str) -> np.ndarray:
        """The ground-truth mask at the working size."""
        return self._at_working_size(self.mask_path(image_id), self.mask(image_id), image_id)

    def read_working_mask(self, path: Path, image_id: str) -> np.ndarray:
        """A mask file a stage wrote for the image (at the file's size), at the working size."""
        return self._at_working_size(path, read_mask(path), image_id)

    def checked_mask(self, image_id: str, shape: tuple[int, ...]) -> np.ndarray:
        """The ground-truth mask at the working size, which must be `shape`, the size of what it
        scores."""
        return check_fits(self.mask_path(image_id), self.working_mask(image_id), shape)

    def label_matrix(self) -> np.ndarray:
        """Multi-hot [N, C] image-level labels for the whole split; raises naming every bad image."""
        matrix = np.zeros((len(self.ids), self.num_classes), np.float32)
        bad = BadImages(f"{self.root}: split '{self.split}' has invalid image-level labels")
        for row, image_id in enumerate(self.ids):
            with bad.skip():
                matrix[row, self.labels(image_id)] = 1.0
        bad.raise_if_any()
        return matrix
