"""Stage `eval-calibration`: how good the calibrated thresholds are, scored on ground truth beside
the fixed ones (calibrate.fixed_*) and the oracle's (the best on ground truth), on `eval.split`.

Seeds: mIoU at every threshold of the calibration's grid. Pseudo-masks: mIoU as eval-pseudo
counts it (255 as background), which depends on the high threshold alone: a pixel is a class
where the label CRF at the high threshold says so. A CRF per image and threshold is too dear for
the whole grid, so the oracle is searched coarse to fine: every `COARSE`th threshold, then every
one within `COARSE` steps of the best of those (on a curve with two far-apart peaks it may settle
on the lower one).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.cam import normalise_max
from pipeline.cam.seeds import cam_path, load_cams
from pipeline.config import Config
from pipeline.data import open_split
from pipeline.data.images import read_image
from pipeline.metrics import confusion, mean_iou, sweep_confusions
from pipeline.refine.calibration import read_choices, threshold_grids, used_thresholds
from pipeline.refine.masks import MASK_KEYS, MaskRule, foreground_labels, pseudo_rule
from pipeline.runs import RESULTS, progress, write_json
from pipeline.workers import worker_pool

GROUND_TRUTH = True
FOLDER = "eval/calibration"
OUTPUTS = {"results": RESULTS}
INPUTS = {"seeds": ("cams", "seeds"), "calibration": ("calibrate", "choices")}
KEYS = ("eval.split", "eval.bg_threshold", "calibrate.step", "calibrate.max_threshold",
        "calibrate.fixed_bg_threshold", *MASK_KEYS)
COARSE = 5


def _foreground_confusions(image: np.ndarray, cams: np.ndarray, classes: np.ndarray, gt: np.ndarray,
                           rule: MaskRule, highs: list[float], n: int) -> np.ndarray:
    """[T, n, n]: the confusion of one image's pseudo-mask labels at each high threshold."""
    return np.stack([confusion(gt, foreground_labels(image, cams, classes, rule, high), n) for high in highs])


def mask_mious(cfg: Config, seeds: Path, highs: list[float]) -> dict[float, float]:
    """Pseudo-mask mIoU of `eval.split` at each high threshold of `highs`."""
    if not highs:
        return {}
    voc = open_split(cfg.data, cfg.eval.split)
    n = voc.num_classes + 1
    rule = pseudo_rule(cfg.pseudo)

    def jobs():
        for image_id in voc.ids:
            cams, classes = load_cams(cam_path(seeds, image_id))
            yield read_image(voc.image_path(image_id)), cams, classes, voc.checked_mask(image_id, cams.shape[1:]), \
                rule, highs, n
    total = np.zeros((len(highs), n, n), np.int64)
    with worker_pool(cfg.pseudo.workers) as workers:
        for counts in progress(workers.map(_foreground_confusions, jobs()), total=len(voc.ids),
                               desc=f"eval-calibration, {len(highs)} thresholds"):
            total += counts
    return {high: round(mean_iou(matrix), 4) for high, matrix in zip(highs, total)}


def seed_mious(cfg: Config, seeds: Path, grid: np.ndarray) -> np.ndarray:
    """Seed mIoU of `eval.split` at each threshold of `grid` (the maps max-normalised)."""
    voc = open_split(cfg.data, cfg.eval.split)
    n = voc.num_classes + 1
    sweep = np.zeros((len(grid), n, n), np.int64)
    for image_id in progress(voc.ids, desc="eval-calibration seeds"):
        cams, classes = load_cams(cam_path(seeds, image_id))
        gt = voc.checked_mask(image_id, cams.shape[1:])
        sweep += sweep_confusions(gt, normalise_max(torch.from_numpy(cams)).numpy(), classes, grid, n)
    return np.array([round(mean_iou(m), 4) for m in sweep])


def compared(scores: dict[float, float], grid: np.ndarray, calibrated: float | None, fixed: float,
             used: dict) -> dict:
    """The oracle (the best of `scores` on the grid), calibrated, fixed and used thresholds, each with
    its mIoU."""
    on_grid = {t: m for t, m in scores.items() if np.isclose(grid, t).any()}
    oracle = max(on_grid, key=lambda t: (on_grid[t], -t))
    picks = {"oracle": oracle, "calibrated": calibrated, "fixed": fixed, "used": used["value"]}
    return {**picks, "used_source": used["source"],
            **{f"miou_{name}": scores[t] if t is not None else None for name, t in picks.items()}}


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    choices = read_choices(inputs["calibration"])
    used = used_thresholds(cfg, choices)
    grid = threshold_grids(cfg)
    calibrated = {name: choices[name]["calibrated"] if choices else None for name in grid}

    seeds_at = dict(zip(grid["bg_threshold"].tolist(), seed_mious(cfg, inputs["seeds"], grid["bg_threshold"])))
    extra = sorted({cfg.calibrate.fixed_bg_threshold, used["bg_threshold"]["value"]} - set(seeds_at))
    if extra:  # a threshold off the grid, set by hand
        seeds_at.update(zip(extra, seed_mious(cfg, inputs["seeds"], np.array(extra)).tolist()))

    highs = grid["fg_threshold_high"]
    picks = {cfg.calibrate.fixed_fg_threshold_high, used["fg_threshold_high"]["value"],
             *filter(None, [calibrated["fg_threshold_high"]])}
    masks_at = mask_mious(cfg, inputs["seeds"], sorted({*highs[::COARSE].tolist(), *picks}))
    coarse_best = max(highs[::COARSE], key=lambda t: masks_at[float(t)])
    fine = [float(t) for t in highs if abs(t - coarse_best) < COARSE * cfg.calibrate.step - 1e-9]
    masks_at.update(mask_mious(cfg, inputs["seeds"], [t for t in fine if t not in masks_at]))

    results = {
        "split": cfg.eval.split,
        "bg_threshold": {**compared(seeds_at, grid["bg_threshold"], calibrated["bg_threshold"],
                                    cfg.calibrate.fixed_bg_threshold, used["bg_threshold"]),
                         "sweep": {f"{t:.2f}": m for t, m in sorted(seeds_at.items())}},
        "fg_threshold_high": {**compared(masks_at, highs, calibrated["fg_threshold_high"],
                                         cfg.calibrate.fixed_fg_threshold_high, used["fg_threshold_high"]),
                              "sweep": {f"{t:.2f}": m for t, m in sorted(masks_at.items())}},
    }
    write_json(out / RESULTS, results)
    return {name: {k: v for k, v in scores.items() if k != "sweep"} for name, scores in results.items()
            if name != "split"}
