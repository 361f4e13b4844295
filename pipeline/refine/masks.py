"""Pseudo-masks as a run makes them: `confident_mask` with a config's `pseudo` settings, and
the files the `pseudo` stage stores them in (`<id>.png`, palette PNG, 0 background, 255 ignore)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import PseudoConfig, to_dict
from pipeline.refine.pseudo import confident_mask


def mask_path(folder: Path, image_id: str) -> Path:
    return Path(folder) / f"{image_id}.png"


def mask_settings(settings: PseudoConfig) -> dict:
    """The `pseudo` settings a pseudo-mask depends on: all but the number of CRF workers."""
    return {k: v for k, v in to_dict(settings).items() if k != "workers"}


def crf_settings(settings: PseudoConfig) -> dict:
    """The label CRF's parameters (preset "label") that pseudo-masks are refined with."""
    return {"gt_prob": settings.crf_gt_prob, "iterations": settings.crf_iterations,
            "bilateral_sxy": settings.crf_bilateral_sxy, "bilateral_srgb": settings.crf_bilateral_srgb}


def pseudo_mask(settings: PseudoConfig, image: np.ndarray, cams: np.ndarray,
                classes: np.ndarray) -> np.ndarray:
    """The confident pseudo-mask of one image from its (unnormalised) fused CAMs."""
    peak = cams.max(axis=(1, 2), keepdims=True)
    cams = cams / (peak + 1e-5)
    high, low = ((settings.fg_threshold_high, settings.fg_threshold_low) if settings.background == "constant"
                 else (settings.bg_alpha_high, settings.bg_alpha_low))
    return confident_mask(image, cams, classes, high, low, background=settings.background,
                          crf=settings.crf, **crf_settings(settings))
