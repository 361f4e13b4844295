"""Pseudo-mask assembly: background threshold, label CRF, and the confidence rule (IRN).

With a high background threshold only confident foreground survives; with a low one only
confident background does. A pixel keeps its class where the high-threshold mask says foreground,
is background where both masks say background, and is 255 (ignore) where they disagree.
"""
from __future__ import annotations

import numpy as np

from pipeline.refine.crf import dense_crf

IGNORE = 255


def refined_labels(image: np.ndarray, cams: np.ndarray, classes: np.ndarray, threshold: float,
                   crf: bool, **crf_params) -> np.ndarray:
    """Thresholded labels, refined by the label CRF over background + present classes."""
    keys = np.concatenate([[0], classes + 1])
    scores = np.concatenate([np.full((1, *cams.shape[1:]), threshold, np.float32), cams])
    if not crf:
        return keys[scores.argmax(0)]
    one_hot = np.eye(len(keys), dtype=np.float32)[scores.argmax(0)].transpose(2, 0, 1)
    return keys[dense_crf(image, one_hot, preset="label", **crf_params).argmax(0)]


def confident_mask(image: np.ndarray, cams: np.ndarray, classes: np.ndarray, high: float, low: float,
                   crf: bool = True, **crf_params) -> np.ndarray:
    """uint8 [H, W] pseudo-mask: class ids where confident, 0 background, 255 unsure."""
    foreground = refined_labels(image, cams, classes, high, crf, **crf_params)
    background = refined_labels(image, cams, classes, low, crf, **crf_params)
    mask = foreground.astype(np.uint8)
    mask[foreground == 0] = IGNORE
    mask[(foreground == 0) & (background == 0)] = 0
    return mask
