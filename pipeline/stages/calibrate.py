"""Stage `calibrate`: the seeds' background threshold (`eval.bg_threshold`) and the pseudo-masks'
high threshold (`pseudo.fg_threshold_high`) chosen from the seeds and the images of
`calibrate.split` alone, each on the maps it applies to: the seeds max-normalised, the
pseudo-masks' maps divided by their `pseudo.peak_quantile` quantile. For each, the threshold
whose foreground carries the most information about the pixels' colours, averaged over the
images with a class (`pipeline.refine.calibration`). No mask is read.

It writes both choices and the curves they maximise to `choices.json`; the stages that apply a
threshold read it there where the config's value is "auto" (`calibration.with_thresholds`: a
number set by hand wins).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cam.seeds import cam_path, load_cams
from pipeline.config import Config, section_keys
from pipeline.data import open_split
from pipeline.data.images import DataError, read_image, skipping
from pipeline.refine.calibration import best_threshold, colour_index, information_curve, threshold_grids
from pipeline.refine.masks import peak_normalised
from pipeline.runs import StageError, progress, write_json

SWITCH = "calibrate.enabled"
FOLDER = "calibrate"
OUTPUTS = {"choices": "choices.json"}
INPUTS = {"seeds": ("cams", "seeds")}
# the fixed values are the fallback of the stages that apply the thresholds, not its concern
KEYS = (*section_keys("calibrate", but=("enabled", "fixed_bg_threshold", "fixed_fg_threshold_high")),
        "pseudo.fg_threshold_low", "pseudo.peak_quantile")


def image_maps(cams: np.ndarray, peak_quantile: float) -> dict[str, np.ndarray]:
    """The highest map of each pixel [H, W] as each threshold sees it."""
    return {"bg_threshold": peak_normalised(cams, 1.0).max(0),
            "fg_threshold_high": peak_normalised(cams, peak_quantile).max(0)}


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    if cfg.calibrate.split not in cfg.cam.splits:
        raise StageError(f"config key 'calibrate.split': '{cfg.calibrate.split}' has no seeds; add it to "
                         f"cam.splits {cfg.cam.splits} or calibrate on one of them")
    voc = open_split(cfg.data, cfg.calibrate.split)
    bins = cfg.calibrate.colour_bins
    grid = threshold_grids(cfg)
    if not len(grid["fg_threshold_high"]):
        raise StageError(f"calibrate: no threshold of step {cfg.calibrate.step} lies above pseudo.fg_threshold_low "
                         f"{cfg.pseudo.fg_threshold_low} and up to calibrate.max_threshold {cfg.calibrate.max_threshold}")
    curves = {name: np.zeros(len(values)) for name, values in grid.items()}
    counted = 0
    bad = skipping("calibrate")
    for image_id in progress(voc.ids, desc="calibrate"):
        with bad.skip():
            cams, classes = load_cams(cam_path(inputs["seeds"], image_id))
            if not len(classes):
                continue  # a negative's foreground is empty at every threshold
            image = read_image(voc.image_path(image_id))
            if image.shape[:2] != cams.shape[1:]:
                raise DataError(f"{voc.image_path(image_id)}: {image.shape[1]}x{image.shape[0]} px, but its seeds "
                                f"are {cams.shape[2]}x{cams.shape[1]}; rerun cams")
            colours = colour_index(image, bins)
            for name, peak in image_maps(cams, cfg.pseudo.peak_quantile).items():
                curves[name] += information_curve(peak, colours, grid[name], bins)
            counted += 1
    bad.raise_if_any()
    if not counted:
        raise StageError(f"calibrate: no image of split '{cfg.calibrate.split}' has a class, so there is "
                         f"nothing to calibrate on; set the thresholds by hand or calibrate.enabled=false")
    choices = {"split": cfg.calibrate.split, "images": counted, "colour_bins": bins}
    for name, values in grid.items():
        mean = curves[name] / counted
        choices[name] = {"calibrated": best_threshold(mean, values), "grid": values.tolist(),
                         "information": np.round(mean, 6).tolist()}
    write_json(out / OUTPUTS["choices"], choices)
    return {"images": counted, **{name: choices[name]["calibrated"] for name in grid}}
