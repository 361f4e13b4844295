"""Masks as a run writes them: `write_mask` turns one image's class scores into a palette PNG
(`<id>.png`: 0 background, 1..C classes, 255 unsure) by a `MaskRule`. The pseudo-mask stages
(`pseudo` on the seeds, `pseudo-aff` on the seeds `walked_cams` spread along a run's affinities,
`pseudo-r2` on a segmenter's `segmenter_scores`) and `label` use the rule of a config's `pseudo`
settings (`pseudo_rule`); `eval-seg` writes the segmenter's predictions by a plain argmax."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from pipeline import distributed
from pipeline.config import AffinityConfig, Config, PseudoConfig, section_keys, to_dict
from pipeline.data import open_split
from pipeline.data.images import resized_mask, save_mask
from pipeline.data.outputs import output_file
from pipeline.data.transforms import image_batches, normalised_batch
from pipeline.models.segmenter import predict_probs
from pipeline.refine.pseudo import confident_mask, labels_at, refined_labels
from pipeline.refine.random_walk import propagate
from pipeline.runs import progress


def mask_path(folder: Path, image_id: str) -> Path:
    return output_file(folder, image_id, ".png")


def unwritten_batches(cfg: Config, folder: Path, batch_size: int, bad, stage: str):
    """(the split, ids, images) over every split of `pseudo.splits`, in batches: this rank's share of
    the images that have no mask in `folder` yet (a bad image is left out and recorded in `bad`)."""
    for split in cfg.pseudo.splits:
        voc = open_split(cfg.data, split)
        todo = distributed.unwritten(voc.ids, lambda image_id: mask_path(folder, image_id))
        for ids, images in progress(image_batches(voc, todo, batch_size, bad), desc=f"{stage} {split}"):
            yield voc, ids, images


# The config keys a pseudo-mask depends on: the `pseudo` section but the number of CRF workers,
# the high threshold's and the layer set's fallbacks where calibration is off, and the margin
# added to the calibrated high threshold.
MASK_KEYS = (*section_keys("pseudo", but=("workers",)), "calibrate.fixed_fg_threshold_high", "calibrate.teacher_margin",
             "calibrate.fixed_layers")
# Where a mask stage reads the run's calibrated layer set and thresholds (`calibration.with_choices`).
CALIBRATION_INPUT = {"calibration": ("calibrate", "choices")}


def mask_settings(settings: PseudoConfig) -> dict:
    """The `pseudo` settings a pseudo-mask depends on: all but the number of CRF workers."""
    return {k: v for k, v in to_dict(settings).items() if k != "workers"}


def crf_settings(settings: PseudoConfig) -> dict:
    """The label CRF's parameters (preset "label") that pseudo-masks are refined with."""
    return {"gt_prob": settings.crf_gt_prob, "iterations": settings.crf_iterations,
            "bilateral_sxy": settings.crf_bilateral_sxy, "bilateral_srgb": settings.crf_bilateral_srgb}


def peak_normalised(cams: np.ndarray, quantile: float) -> np.ndarray:
    """[K, H, W] maps divided by their `quantile` quantile over the image (1.0: their max) and
    clipped at 1."""
    peak = np.quantile(cams.reshape(len(cams), -1), quantile, axis=1)[:, None, None]
    return np.minimum(cams / (peak + 1e-5), 1.0).astype(np.float32)


@dataclass(frozen=True)
class MaskRule:
    """How one image's class scores become its mask.

    With a `band` (high, low), the scores are the present classes' maps [K, H, W], each divided by
    its `peak_quantile` quantile, and `confident_mask` scores the background against them at both
    levels (`background`: a constant or PSA's power); pixels the two levels disagree on are 255.
    Without one, the scores [1 + K, H, W] hold the background as channel 0, and each pixel takes
    its best channel. Either way the label CRF refines the labels where `crf` gives its parameters.
    """
    crf: dict | None = None
    band: tuple[float, float] | None = None
    background: str = "constant"
    peak_quantile: float = 1.0


def pseudo_rule(settings: PseudoConfig) -> MaskRule:
    """The confident masks of a config's `pseudo` settings: their thresholds, peak and CRF."""
    band = ((settings.fg_threshold_high, settings.fg_threshold_low) if settings.background == "constant"
            else (settings.bg_alpha_high, settings.bg_alpha_low))
    return MaskRule(crf_settings(settings) if settings.crf else None, band, settings.background,
                    settings.peak_quantile)


def class_mask(image: np.ndarray, scores: np.ndarray, classes: np.ndarray, rule: MaskRule) -> np.ndarray:
    """uint8 [H, W] mask of one image from its scores by `rule`: label ids `classes + 1` (the
    present classes, in the order of the scores' class channels), 0 background, 255 unsure. All
    background for an image with no class (a negative)."""
    if len(classes) == 0:
        return np.zeros(image.shape[:2], np.uint8)
    if rule.band is None:
        keys = np.concatenate([[0], classes + 1])
        return refined_labels(image, scores, keys, rule.crf).astype(np.uint8)
    cams = peak_normalised(scores, rule.peak_quantile)
    return confident_mask(image, cams, classes, *rule.band, rule.crf, rule.background)


def foreground_labels(image: np.ndarray, scores: np.ndarray, classes: np.ndarray, rule: MaskRule,
                      high: float) -> np.ndarray:
    """uint8 [H, W]: a band rule's mask at the high threshold `high` with its unsure pixels made
    background, as a pseudo-mask's mIoU counts them (the low threshold changes nothing there): one
    label CRF where the mask takes two."""
    if len(classes) == 0:
        return np.zeros(image.shape[:2], np.uint8)
    cams = peak_normalised(scores, rule.peak_quantile)
    return labels_at(image, cams, classes, high, rule.crf, rule.background).astype(np.uint8)


def write_mask(path: Path, image: np.ndarray, scores: np.ndarray, classes: np.ndarray, rule: MaskRule,
               size: tuple[int, int] | None = None) -> np.ndarray:
    """Write one image's `class_mask` at `path` as a palette PNG; returns it at the image's size.
    With a (height, width) `size` other than the image's, the file is resized to it (nearest): an
    image worked on smaller than its file gets a mask of the file's size."""
    mask = class_mask(image, scores, classes, rule)
    save_mask(path, mask if size is None else resized_mask(mask, size))
    return mask


def pseudo_mask(settings: PseudoConfig, image: np.ndarray, cams: np.ndarray,
                classes: np.ndarray) -> np.ndarray:
    """The confident pseudo-mask of one image from its (unnormalised) fused CAMs."""
    return class_mask(image, cams, classes, pseudo_rule(settings))


def walked_cams(settings: AffinityConfig, boundary: torch.Tensor, cams: np.ndarray) -> np.ndarray:
    """float32 [K, H, W]: one image's fused CAMs walked along the affinities of its boundary map
    [h, w] (IRN), each class max-normalised: the CAMs are resized to the boundary's size, walked,
    and resized back (bilinear, as IRN upsamples). A negative's no maps stay none."""
    if not len(cams):
        return cams
    size = cams.shape[1:]
    small = F.interpolate(torch.from_numpy(cams)[None].float(), size=tuple(boundary.shape),
                          mode="bilinear", antialias=True, align_corners=False)[0]
    small = small / small.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)
    walked = propagate(small, boundary, settings.radius, settings.beta, settings.exp_times)
    walked = F.interpolate(walked[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return (walked / walked.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)).numpy()


def known_class_probs(probs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """float32 [1 + K, H, W]: a segmenter's softmax [C + 1, H, W] restricted to the background and
    an image's K known classes (label ids `classes + 1`), renormalised to sum to 1."""
    known = probs[np.concatenate([[0], np.asarray(classes) + 1])]
    return (known / np.maximum(known.sum(0, keepdims=True), 1e-8)).astype(np.float32)


def segmenter_scores(model: torch.nn.Module, images: list[np.ndarray], label_sets: list[np.ndarray],
                     flip: bool) -> list[np.ndarray]:
    """Per image, the class channels [K, H, W] of the segmenter's `known_class_probs` (its softmax,
    flip-averaged with `flip`): they take the seeds' place in a pseudo-mask."""
    probs = predict_probs(model, normalised_batch(images), flip).numpy()
    return [known_class_probs(p, labels)[1:] for p, labels in zip(probs, label_sets)]
