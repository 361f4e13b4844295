"""Stage `calibrate`: the seeds' layer set (among the subsets of `cam.layers`), background
threshold (`eval.bg_threshold`) and the pseudo-masks' high threshold (`pseudo.fg_threshold_high`)
chosen from the seeds and the images of `calibrate.split` alone, each threshold on the maps it
applies to: the seeds max-normalised, the pseudo-masks' maps divided by their
`pseudo.peak_quantile` quantile. For each, the threshold whose foreground carries the most
information about the pixels' colours, averaged over the images with a class; the layer set is
the one whose seeds carry the most at their best threshold (`pipeline.refine.calibration`). No
mask is read.

It writes the choices and the curves they maximise to `choices.json`; the stages that apply them
read it there where the config's value is "auto" (`calibration.with_choices`: a number set by
hand wins, and `calibrate.choose_layers: false` keeps cam.layers).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cam.seeds import cam_path, load_cam_sets
from pipeline.config import Config, section_keys
from pipeline.data import open_split
from pipeline.data.images import DataError, skipping
from pipeline.refine.calibration import (best_threshold, colour_index, information_curve, layer_set_name, layer_sets,
                                         threshold_grids)
from pipeline.refine.masks import peak_normalised
from pipeline.runs import StageError, progress, write_json

SWITCH = "calibrate.enabled"
FOLDER = "calibrate"
OUTPUTS = {"choices": "choices.json"}
INPUTS = {"seeds": ("cams", "seeds")}
# the fixed values (the fallback) and the teacher's margin are the concern of the stages that
# apply the thresholds, not its own
KEYS = (*section_keys("calibrate", but=("enabled", "fixed_bg_threshold", "fixed_fg_threshold_high",
                                                     "fixed_layers", "teacher_margin")),
        "pseudo.fg_threshold_low", "pseudo.peak_quantile", "cam.layers", "cam.fuse")


def image_maps(cams: np.ndarray, peak_quantile: float) -> dict[str, np.ndarray]:
    """The highest map of each pixel [H, W] as each threshold sees it."""
    return {"bg_threshold": peak_normalised(cams, 1.0).max(0),
            "fg_threshold_high": peak_normalised(cams, peak_quantile).max(0)}


def information_sums(cfg: Config, voc, seeds: Path, sets: list[list[str]],
                     grid: dict[str, np.ndarray]) -> tuple[list[dict[str, np.ndarray]], int]:
    """Per layer set of `sets`, {threshold name: its information curve summed over the images of
    `voc` with a class}, and how many such images there were."""
    bins = cfg.calibrate.colour_bins
    sums = [{name: np.zeros(len(values)) for name, values in grid.items()} for _ in sets]
    counted = 0
    bad = skipping("calibrate")
    for image_id in progress(voc.ids, desc="calibrate"):
        with bad.skip():
            fused, classes = load_cam_sets(cam_path(seeds, image_id), sets, cfg.cam.fuse)
            if not len(classes):
                continue  # a negative's foreground is empty at every threshold
            image = voc.image(image_id)
            if image.shape[:2] != fused[0].shape[1:]:
                raise DataError(f"{voc.image_path(image_id)}: {image.shape[1]}x{image.shape[0]} px, but its seeds "
                                f"are {fused[0].shape[2]}x{fused[0].shape[1]}; rerun cams")
            colours = colour_index(image, bins)
            for set_sums, cams in zip(sums, fused):
                for name, peak in image_maps(cams, cfg.pseudo.peak_quantile).items():
                    set_sums[name] += information_curve(peak, colours, grid[name], bins)
            counted += 1
    bad.raise_if_any()
    return sums, counted


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    if cfg.calibrate.split not in cfg.cam.splits:
        raise StageError(f"config key 'calibrate.split': '{cfg.calibrate.split}' has no seeds; add it to "
                         f"cam.splits {cfg.cam.splits} or calibrate on one of them")
    grid = threshold_grids(cfg)
    if not len(grid["fg_threshold_high"]):
        raise StageError(f"calibrate: no threshold of step {cfg.calibrate.step} lies above pseudo.fg_threshold_low "
                         f"{cfg.pseudo.fg_threshold_low} and up to calibrate.max_threshold {cfg.calibrate.max_threshold}")
    sets = layer_sets(cfg)
    sums, counted = information_sums(cfg, open_split(cfg.data, cfg.calibrate.split), inputs["seeds"], sets, grid)
    if not counted:
        raise StageError(f"calibrate: no image of split '{cfg.calibrate.split}' has a class, so there is "
                         f"nothing to calibrate on; set the thresholds by hand or calibrate.enabled=false")
    peaks = [float(np.max(set_sums["bg_threshold"])) / counted for set_sums in sums]
    chosen = int(np.argmax(peaks))
    choices = {"split": cfg.calibrate.split, "images": counted, "colour_bins": cfg.calibrate.colour_bins,
               "layers": {"calibrated": sets[chosen],
                          "information": {layer_set_name(layers): round(peak, 6) for layers, peak in zip(sets, peaks)}}}
    for name, values in grid.items():
        mean = sums[chosen][name] / counted
        choices[name] = {"calibrated": best_threshold(mean, values), "grid": values.tolist(),
                         "information": np.round(mean, 6).tolist()}
    write_json(out / OUTPUTS["choices"], choices)
    return {"images": counted, "layers": layer_set_name(sets[chosen]),
            **{name: choices[name]["calibrated"] for name in grid}}
