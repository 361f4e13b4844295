"""IoU from one confusion matrix over a whole split (docs/design.md, section 6).

Background (0) is a class like any other; ground-truth pixels of 255 are ignored. IoU is
TP / (TP + FP + FN); mIoU is the mean over classes that occur in the ground truth or the
prediction (a class absent from both has no IoU, not an IoU of 0 or 1).
"""
from __future__ import annotations

import numpy as np

from pipeline.config import EvalConfig

IGNORE = 255


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] counts, rows = ground truth, columns = prediction."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    keep = gt != IGNORE
    gt, pred = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
    if pred.size and (pred.max() >= num_classes or gt.max() >= num_classes):
        raise ValueError(f"label ids exceed the {num_classes} classes")
    return _count(gt, pred, num_classes)


def _count(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(gt * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """IoU per class; NaN where the class is in neither ground truth nor prediction."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(matrix: np.ndarray) -> float:
    return float(np.nanmean(iou_per_class(matrix)))


def sweep_confusions(gt: np.ndarray, cams: np.ndarray, classes: np.ndarray, thresholds: np.ndarray,
                     num_classes: int) -> np.ndarray:
    """Confusion matrices [T, C, C] of one image for each background threshold.

    A pixel is background where the highest normalised CAM is at most the threshold, else the
    class of that CAM (IRN's rule: a constant background channel, then argmax).
    """
    keep = gt != IGNORE
    gt = gt[keep].astype(np.int64)
    if cams.shape[0] == 0:
        peak = np.zeros(gt.shape)
        winner = np.zeros(gt.shape, np.int64)
    else:
        flat = cams[:, keep]
        peak = flat.max(0)
        winner = classes[flat.argmax(0)].astype(np.int64) + 1
    out = np.empty((len(thresholds), num_classes, num_classes), np.int64)
    for t, threshold in enumerate(thresholds):
        out[t] = _count(gt, np.where(peak > threshold, winner, 0), num_classes)
    return out


def thresholds(settings: EvalConfig) -> np.ndarray:
    """The background thresholds of the seed sweep: 0 to `sweep_max` by `sweep_step`."""
    count = int(round(settings.sweep_max / settings.sweep_step)) + 1
    return np.round(np.arange(count) * settings.sweep_step, 4)


def swept_best(sweep: np.ndarray, grid: np.ndarray) -> tuple[float, float]:
    """(best mIoU, its threshold) of a stack of confusion matrices, one per threshold."""
    mious = np.array([mean_iou(m) for m in sweep])
    best = int(np.argmax(mious))
    return round(float(mious[best]), 4), float(grid[best])


def unsure_as_background(pseudo: np.ndarray) -> np.ndarray:
    """A pseudo-mask as it is scored: its unsure pixels (255) counted as background (IRN's way)."""
    return np.where(pseudo == IGNORE, 0, pseudo)


def pseudo_counts(gt: np.ndarray, pseudo: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """How a pseudo-mask scores (docs/design.md, section 6): (confusion with 255 counted as
    background, [correct, confident, labelled] pixel counts for the confident pixels' precision
    and coverage)."""
    sure = pseudo != IGNORE
    valid = gt != IGNORE
    matrix = confusion(gt, unsure_as_background(pseudo), num_classes)
    counts = np.array([(sure & valid & (pseudo == gt)).sum(), (sure & valid).sum(), valid.sum()], np.int64)
    return matrix, counts


def pseudo_scores(matrix: np.ndarray, counts: np.ndarray) -> dict:
    """mIoU, precision and coverage from summed `pseudo_counts`."""
    correct, confident, labelled = (int(c) for c in counts)
    return {"miou": round(mean_iou(matrix), 4), "precision": round(correct / max(1, confident), 4),
            "coverage": round(confident / max(1, labelled), 4)}


class PseudoTally:
    """`pseudo_counts` summed over images, one (ground truth, pseudo-mask) pair at a time."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), np.int64)
        self.counts = np.zeros(3, np.int64)

    def add(self, gt: np.ndarray, pseudo: np.ndarray) -> None:
        matrix, counts = pseudo_counts(gt, pseudo, self.num_classes)
        self.matrix += matrix
        self.counts += counts

    def scores(self) -> dict:
        return pseudo_scores(self.matrix, self.counts)
