"""Pseudo-mask assembly: background score, label CRF, and the confidence rule (IRN).

The background channel is a constant threshold (IRN) or `(1 - max_c M^c)^alpha` (PSA). With a
high background threshold (PSA: a low alpha) only confident foreground survives; with a low one
(a high alpha) only confident background does. A pixel keeps its class where the high-threshold mask says foreground,
is background where both masks say background, and is 255 (ignore) where they disagree.
"""
from __future__ import annotations

import numpy as np

from pipeline.refine.crf import dense_crf

IGNORE = 255


BACKGROUNDS = ("constant", "power")


def background_score(cams: np.ndarray, background: str, value: float) -> np.ndarray:
    """[1, H, W] background channel for max-normalised `cams` [K, H, W]: the constant `value`
    (IRN's threshold), or `(1 - max_c M^c) ** value` (PSA's alpha)."""
    if background == "constant":
        return np.full((1, *cams.shape[1:]), value, np.float32)
    if background == "power":
        return ((1.0 - cams.max(0, keepdims=True)) ** value).astype(np.float32)
    raise ValueError(f"unknown background score '{background}' (choose from {', '.join(BACKGROUNDS)})")


def refined_labels(image: np.ndarray, scores: np.ndarray, keys: np.ndarray, crf: dict | None) -> np.ndarray:
    """`keys[c]` of each pixel's best channel c of `scores` [N, H, W], refined by the label CRF
    with the parameters `crf` (None: unrefined). The label CRF reads nothing of the scores but
    their argmax."""
    if crf is not None:
        scores = dense_crf(image, scores, preset="label", **crf)
    return keys[scores.argmax(0)]


def with_background(cams: np.ndarray, classes: np.ndarray, background: str,
                    value: float) -> tuple[np.ndarray, np.ndarray]:
    """(scores [1 + K, H, W], their label ids): the background channel (`background_score`) before
    the present classes' `cams` [K, H, W]."""
    keys = np.concatenate([[0], classes + 1])
    return np.concatenate([background_score(cams, background, value), cams]), keys


def labels_at(image: np.ndarray, cams: np.ndarray, classes: np.ndarray, value: float, crf: dict | None,
              background: str) -> np.ndarray:
    """Label ids [H, W] at one background setting `value` (a constant or an alpha), refined by the
    label CRF where `crf` gives its parameters: 0 where the background wins."""
    return refined_labels(image, *with_background(cams, classes, background, value), crf)


def confident_mask(image: np.ndarray, cams: np.ndarray, classes: np.ndarray, high: float, low: float,
                   crf: dict | None = None, background: str = "constant") -> np.ndarray:
    """uint8 [H, W] pseudo-mask: class ids where confident, 0 background, 255 unsure. `high` is
    the background setting that keeps only sure foreground (a high constant, a low alpha), `low`
    the one that keeps only sure background; `crf` the label CRF's parameters (None: no CRF)."""
    sure_foreground = labels_at(image, cams, classes, high, crf, background)
    sure_background = labels_at(image, cams, classes, low, crf, background)
    mask = sure_foreground.astype(np.uint8)
    mask[sure_foreground == 0] = IGNORE
    mask[(sure_foreground == 0) & (sure_background == 0)] = 0
    return mask
