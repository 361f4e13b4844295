"""A tiny procedural dataset in VOC layout (coloured shapes on noise) for tests and smoke runs.

Each class has its own shape and colour, so a small network learns it in seconds on a CPU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.images import save_mask
from pipeline.data.voc import make_layout, write_index

SHAPES = ["square", "disc", "cross"]
COLOURS = {"square": (230, 40, 40), "disc": (40, 200, 40), "cross": (40, 80, 230)}


def _shape_mask(shape: str, size: int, radius: int, cy: int, cx: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    if shape == "square":
        return (abs(yy - cy) <= radius) & (abs(xx - cx) <= radius)
    if shape == "disc":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    arm = max(1, radius // 3)
    return (((abs(yy - cy) <= arm) & (abs(xx - cx) <= radius))
            | ((abs(xx - cx) <= arm) & (abs(yy - cy) <= radius)))


def shapes_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 120, size=(size, size, 3)).astype(np.uint8)
    labels = np.zeros((size, size), np.uint8)
    count = int(rng.integers(1, 3))
    for index in rng.choice(len(SHAPES), size=count, replace=False):
        radius = int(rng.integers(size // 8, size // 5))
        cy, cx = rng.integers(radius, size - radius, size=2)
        mask = _shape_mask(SHAPES[index], size, radius, int(cy), int(cx))
        image[mask] = COLOURS[SHAPES[index]]
        labels[mask] = index + 1
    return image, labels


def build_shapes(root: str | Path, seed: int, size: int, n_train: int, n_val: int) -> dict:
    """Write the dataset in VOC layout into the (empty) folder `root`."""
    root = Path(root)
    make_layout(root)
    lists: dict[str, list[str]] = {}
    for split, count, code in (("train", n_train, 1), ("val", n_val, 2)):
        lists[split] = []
        for index in range(count):
            image, labels = shapes_scene(np.random.default_rng([seed, code, index]), size)
            image_id = f"{split}_{index:05d}"
            Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.png")
            save_mask(root / "SegmentationClass" / f"{image_id}.png", labels)
            lists[split].append(image_id)
    lists["train_aug"] = lists["train"]
    sizes = write_index(root, lists, SHAPES)
    return {"name": "shapes", "seed": seed, "image_size": size, "classes": SHAPES, "sizes": sizes}
