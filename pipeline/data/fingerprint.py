"""A fingerprint of the dataset content a run reads, for the stages' hashes: an edited mask, image,
split list, class list or labels CSV makes every stage that reads it run again.

It covers each split's image ids and class names, the name, size and modification time of each
image and mask, and, for a labelled image folder, each image's labels from its CSV. Only file
metadata is read (a `stat` per file, no image is opened), so that a large dataset costs little
at every stage; an edit that keeps a file's size and modification time goes unseen.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

from pipeline.config import Config, config_hash, to_dict
from pipeline.data import has_masks, open_split
from pipeline.data.images import DataError
from pipeline.data.split import Split


def config_splits(cfg: Config) -> list[str]:
    """Every dataset split the config names, sorted."""
    return sorted({cfg.cls.split, cfg.cls.val_split, *filter(None, [cfg.cls.pretrain_split]),
                   *cfg.cam.splits, *cfg.pseudo.splits, cfg.eval.split, cfg.seg.split, cfg.seg.val_split,
                   cfg.affinity.split, cfg.calibrate.split})


# The fingerprints computed inside `remembering()`, by data settings and splits; None outside it.
_remembered: dict[str, str] | None = None


@contextlib.contextmanager
def remembering() -> Iterator[None]:
    """Compute each fingerprint once inside the block, so that a command running every stage
    reads the dataset's metadata once, not once per stage. Its stages record the dataset as it
    was when first read: an edit made while they run makes the next command run them again."""
    global _remembered
    _remembered = {}
    try:
        yield
    finally:
        _remembered = None


def fingerprint(cfg_data, splits: list[str]) -> str:
    """A short hash of what the `splits` of the dataset a config (a DataConfig) names hold."""
    key = config_hash({"data": to_dict(cfg_data), "splits": splits})
    if _remembered is not None and key in _remembered:
        return _remembered[key]
    masks = has_masks(cfg_data)
    digest = config_hash({split: _described(open_split(cfg_data, split), masks) for split in splits})
    if _remembered is not None:
        _remembered[key] = digest
    return digest


def _described(split: Split, masks: bool) -> dict:
    rows = [[image_id, _file(split.image_path, image_id),
             _file(split.mask_path, image_id) if masks else split.labels(image_id).tolist()]
            for image_id in split.ids]
    return {"classes": split.class_names, "images": rows}


def _file(path_of: Callable[[str], Path], image_id: str) -> list | None:
    """[name, size, modification time] of the image's file that `path_of` names; None where it
    is missing (the stages report a missing image themselves)."""
    try:
        path = Path(path_of(image_id))
        stat = os.stat(path)
    except (DataError, OSError):
        return None
    return [path.name, stat.st_size, stat.st_mtime_ns]
