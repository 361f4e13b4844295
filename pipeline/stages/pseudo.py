"""Stage `pseudo`: confident pseudo-masks `pseudo/<id>.png` (0 background, 255 ignore).

The CRF is single-threaded C++, so images are spread over a process pool; each worker writes its
masks itself, so memory does not grow with the dataset, and images already written are skipped.
"""
from __future__ import annotations

import os
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pipeline import distributed
from pipeline.config import Config, PseudoConfig, to_dict
from pipeline.data import open_split
from pipeline.data.images import DataError, read_image, save_mask, skipping
from pipeline.refine.pseudo import confident_mask
from pipeline.runs import progress
from pipeline.stages.cams import cam_path, load_cams


def OUTPUT(cfg: Config) -> str:
    return "pseudo"


def UPSTREAM(cfg: Config) -> list[str]:
    return ["cams"]


def SECTION(cfg: Config) -> dict:
    return {k: v for k, v in to_dict(cfg.pseudo).items() if k != "workers"}


def mask_path(folder: Path, image_id: str) -> Path:
    return Path(folder) / f"{image_id}.png"


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


def _write_one(job: tuple[PseudoConfig, Path, Path, Path]) -> str | None:
    """Write one pseudo-mask; a bad image is returned as its problem, not raised, since an
    exception would abandon the rest of the worker's chunk of jobs."""
    settings, image_file, cams_file, out_file = job
    try:
        image = read_image(image_file)
    except DataError as error:
        return str(error)
    cams, classes = load_cams(cams_file)
    save_mask(out_file, pseudo_mask(settings, image, cams, classes))
    return None


def run(cfg: Config, out: Path, run_dir: Path) -> dict:
    bad = skipping("pseudo")
    jobs = []
    for split in cfg.pseudo.splits:
        voc = open_split(cfg.data, split)
        for i in distributed.shard(voc.ids):
            if not mask_path(out, i).is_file():
                with bad.skip():
                    jobs.append((cfg.pseudo, voc.image_path(i), cam_path(run_dir / "cams", i),
                                 mask_path(out, i)))
    workers = cfg.pseudo.workers or os.cpu_count() or 1
    began = time.perf_counter()
    with get_context("fork").Pool(workers) as pool:
        for problem in progress(pool.imap_unordered(_write_one, jobs, chunksize=16),
                                total=len(jobs), desc="pseudo"):
            if problem:
                bad.add(problem)
    bad.raise_if_any()
    seconds = time.perf_counter() - began
    return {"images": len(list(out.glob("*.png"))), "written_now": len(jobs), "workers": workers,
            "images_per_second": round(len(jobs) / seconds, 1) if jobs else None}
