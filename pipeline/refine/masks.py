"""Pseudo-masks as a run makes them: `confident_mask` with a config's `pseudo` settings (on the
seeds, on the seeds `walked_cams` spread along a run's affinities, or on a segmenter's
`known_class_probs`), and the files the `pseudo`, `pseudo-aff` and `pseudo-r2` stages store them
in (`<id>.png`, palette PNG, 0 background, 255 ignore)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from pipeline import distributed
from pipeline.config import AffinityConfig, Config, PseudoConfig, section_keys, to_dict
from pipeline.data import open_split
from pipeline.data.outputs import output_file
from pipeline.data.transforms import image_batches
from pipeline.refine.pseudo import confident_mask
from pipeline.refine.random_walk import propagate
from pipeline.runs import progress


def mask_path(folder: Path, image_id: str) -> Path:
    return output_file(folder, image_id, ".png")


def unwritten_batches(cfg: Config, folder: Path, batch_size: int, bad, stage: str):
    """(the split, ids, images) over every split of `pseudo.splits`, in batches: this rank's share of
    the images that have no mask in `folder` yet (a bad image is left out and recorded in `bad`)."""
    for split in cfg.pseudo.splits:
        voc = open_split(cfg.data, split)
        todo = [i for i in distributed.shard(voc.ids) if not mask_path(folder, i).is_file()]
        for ids, images in progress(image_batches(voc, todo, batch_size, bad), desc=f"{stage} {split}"):
            yield voc, ids, images


# The config keys a pseudo-mask depends on: the `pseudo` section but the number of CRF workers.
MASK_KEYS = section_keys("pseudo", but=("workers",))


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


def pseudo_mask(settings: PseudoConfig, image: np.ndarray, cams: np.ndarray,
                classes: np.ndarray) -> np.ndarray:
    """The confident pseudo-mask of one image from its (unnormalised) fused CAMs; all background
    for an image with no class (a negative)."""
    if len(classes) == 0:
        return np.zeros(image.shape[:2], np.uint8)
    cams = peak_normalised(cams, settings.peak_quantile)
    high, low = ((settings.fg_threshold_high, settings.fg_threshold_low) if settings.background == "constant"
                 else (settings.bg_alpha_high, settings.bg_alpha_low))
    return confident_mask(image, cams, classes, high, low, background=settings.background,
                          crf=settings.crf, **crf_settings(settings))


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


def segmenter_mask(settings: PseudoConfig, image: np.ndarray, known: np.ndarray,
                   classes: np.ndarray) -> np.ndarray:
    """The confident pseudo-mask of one image from a segmenter's `known_class_probs`: their class
    channels take the seeds' place in `pseudo_mask`."""
    return pseudo_mask(settings, image, np.ascontiguousarray(known[1:]), classes)
