"""Datasets: the readers of a VOC-layout folder and of a labelled image folder, the built
benchmarks, and the transforms; `open_split` opens the split a config names."""
from __future__ import annotations

from pipeline.data.folder import FolderDataset
from pipeline.data.split import Split
from pipeline.data.voc import VocDataset


def has_masks(cfg_data) -> bool:
    """Whether the dataset a config (a DataConfig) names has ground-truth masks: a labelled image
    folder has image-level labels only."""
    return cfg_data.name != "folder"


def open_split(cfg_data, split: str) -> Split:
    """The dataset split named in a config (a DataConfig)."""
    if cfg_data.name == "folder":
        return FolderDataset(cfg_data.root, split, cfg_data.labels_csv, cfg_data.class_names or None,
                             cfg_data.val_fraction, cfg_data.seed, cfg_data.max_side)
    return VocDataset(cfg_data.root, split, cfg_data.class_names or None,
                      cfg_data.image_dir, cfg_data.mask_dir, cfg_data.max_side)
