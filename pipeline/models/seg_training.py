"""Training the segmenter: its training masks checked before it starts, a class-balanced
cross-entropy that ignores 255."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from pipeline.data.images import IGNORE, BadImages, DataError, check_fits
from pipeline.data.split import Split


def class_weights(pixel_counts: np.ndarray, power: float) -> torch.Tensor | None:
    """Median-frequency balancing (Eigen & Fergus 2015, as SegNet trains) raised to `power`, so a
    class the targets rarely show is not drowned by background: weight = (median f / f_c)^power
    over the classes present; None (plain cross-entropy) at power 0."""
    if power == 0:
        return None
    frequency = pixel_counts / pixel_counts.sum()
    present = frequency > 0
    weights = np.zeros(len(frequency))
    weights[present] = (np.median(frequency[present]) / frequency[present]) ** power
    return torch.tensor(weights, dtype=torch.float32)


def segmentation_loss(weights: torch.Tensor | None):
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if weights is None else weights.to(logits.device)
        return F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
    return loss


def check_targets(voc: Split, read_target, target_path) -> np.ndarray:
    """Refuse to start on a training mask that is unreadable, out of range or not its image's
    size, naming every bad one; else each label's pixel count over the split (255 not counted).
    Reads mask pixels but only the images' headers."""
    labels = voc.num_classes + 1
    counts = np.zeros(labels, np.int64)
    bad = BadImages(f"{voc.root}: split '{voc.split}' has invalid training masks; nothing trained")
    for image_id in voc.ids:
        with bad.skip():
            mask = check_fits(target_path(image_id), read_target(image_id), voc.image_shape(image_id))
            known = mask[mask != IGNORE]
            if known.size and known.max() >= labels:
                raise DataError(f"{target_path(image_id)}: label id {known.max()} out of range "
                                f"(0-{labels - 1} or {IGNORE})")
            counts += np.bincount(known, minlength=labels)
    bad.raise_if_any()
    return counts
