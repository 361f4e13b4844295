"""Stage `data`: build a built-in dataset (or check an existing VOC folder) and describe it.

Built datasets go to `data.root`, written into a temporary folder that is renamed when complete,
with `dataset.json` recording the hash of the settings that made them; a matching folder is reused.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import Config, config_hash, to_dict
from pipeline.data import fashion, open_split
from pipeline.data.fingerprint import config_splits
from pipeline.data.images import DataError
from pipeline.data.shapes import build_shapes
from pipeline.data.voc import build_once

FOLDER = "data"
OUTPUTS = {}  # the manifest alone: the dataset's name, sizes and classes
INPUTS = {}
KEYS = ("data",)
READER_KEYS = ("fashion_mnist_dir", "class_names", "image_dir", "mask_dir", "labels_csv", "val_fraction", "max_side")


def DATASET_SPLITS(cfg: Config) -> list[str]:
    # A built dataset is what its settings make (the record in data.root says which); one that
    # is read (voc, folder) is its files, which may change under the same settings.
    return [] if cfg.data.name in BUILDERS else config_splits(cfg)


def _fashion(cfg: Config, folder: Path) -> dict:
    data = cfg.data
    fashion.check_settings(to_dict(data), "data.")
    spec = fashion.SceneSpec(data.seed, data.image_size, tuple(data.classes), data.items_min,
                             data.items_max, data.item_size_min, data.item_size_max)
    source = os.environ.get("FASHION_MNIST_DIR") or data.fashion_mnist_dir
    try:
        return fashion.build(folder, spec, source, data.n_train_pool, data.n_train, data.n_val,
                             data.n_items, data.item_canvas)
    except fashion.FashionMnistMissing as error:
        raise DataError(str(error)) from None


def _shapes(cfg: Config, folder: Path) -> dict:
    return build_shapes(folder, cfg.data.seed, cfg.data.image_size, cfg.data.n_train, cfg.data.n_val)


BUILDERS = {"fashion-scenes": _fashion, "shapes": _shapes}


def build_if_needed(cfg: Config) -> dict:
    """Build the dataset unless `data.root` already holds a build of exactly these settings."""
    wanted = config_hash({k: v for k, v in to_dict(cfg.data).items() if k not in READER_KEYS})
    return build_once(Path(cfg.data.root), wanted, lambda folder: BUILDERS[cfg.data.name](cfg, folder))


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    if cfg.data.name in BUILDERS:
        info = build_if_needed(cfg)
    else:  # a reader (voc, folder): config.check_choices has refused any other name
        info = {"name": cfg.data.name, "seed": cfg.data.seed}
    sizes = {split: len(open_split(cfg.data, split)) for split in config_splits(cfg)}
    return {"name": info["name"], "seed": info["seed"], "root": cfg.data.root, "sizes": sizes,
            "classes": open_split(cfg.data, cfg.cls.split).class_names}
