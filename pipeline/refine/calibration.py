"""Label-free choices: the background threshold at which an image's foreground says the most
about its pixels' colours, the layer set whose seeds say the most at their best threshold, and
how a run's "auto" thresholds and candidate layers become the values its stages use.

A threshold t splits an image into foreground (its highest normalised map above t) and
background. Far too low, everything is foreground; far too high, almost nothing is: either way the
split says little about which colours are where. Between the two, the split that follows the
objects' outlines separates their colours from the surroundings' best, so the mutual information
MI(colour; foreground at t) peaks near the threshold ground truth would choose
(docs/design.md, "Calibration"). No mask is read.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np

from pipeline.config import AUTO, Config
from pipeline.runs import RunOutputs

log = logging.getLogger("pipeline")


def colour_index(image: np.ndarray, bins: int) -> np.ndarray:
    """int64 [H, W]: each pixel's colour bin, `bins` levels per RGB channel (bins ** 3 in all)."""
    levels = (image.astype(np.int64) * bins) // 256
    return (levels[..., 0] * bins + levels[..., 1]) * bins + levels[..., 2]


def information_curve(peak: np.ndarray, colours: np.ndarray, grid: np.ndarray, bins: int) -> np.ndarray:
    """float64 [T]: MI(colour; peak > t) in nats for each t of the ascending `grid`, over the
    pixels of one image (`peak` its highest normalised map, `colours` their `colour_index`).

    One pass over the pixels: they are counted by (the number of grid values below their peak,
    colour), and the foreground at grid[j] is every pixel with more than j of them."""
    colour_count = bins ** 3
    below = np.searchsorted(grid, peak.ravel(), side="left")
    counts = np.bincount(below * colour_count + colours.ravel(),
                         minlength=(len(grid) + 1) * colour_count).reshape(len(grid) + 1, colour_count)
    foreground = counts[::-1].cumsum(0)[::-1][1:]  # [T, colours]: pixels with peak > grid[j]
    total = counts.sum(0)
    joint = np.stack([total - foreground, foreground], axis=1) / peak.size  # [T, 2, colours]
    side = joint.sum(2, keepdims=True)
    colour = joint.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty cell adds 0 log 0 = 0
        terms = joint * np.log(joint / (side * colour))
    return np.nansum(terms, axis=(1, 2))


def threshold_grids(cfg: Config) -> dict[str, np.ndarray]:
    """The thresholds each choice is made among: `calibrate.step` apart up to
    `calibrate.max_threshold`, the high one above `pseudo.fg_threshold_low`."""
    settings = cfg.calibrate
    every = np.round(np.arange(1, int(round(settings.max_threshold / settings.step)) + 1) * settings.step, 4)
    return {"bg_threshold": every, "fg_threshold_high": every[every > cfg.pseudo.fg_threshold_low + 1e-9]}


def best_threshold(curve: np.ndarray, grid: np.ndarray) -> float:
    """The grid value of the curve's maximum (the lowest, on a tie)."""
    return float(grid[int(np.argmax(curve))])


def layer_sets(cfg: Config) -> list[list[str]]:
    """The layer sets calibrate chooses among, the full `cam.layers` last: its every non-empty subset
    with `calibrate.choose_layers`, else `cam.layers` alone."""
    layers = list(cfg.cam.layers)
    if not cfg.calibrate.choose_layers:
        return [layers]
    return [list(subset) for size in range(1, len(layers) + 1) for subset in combinations(layers, size)]


def layer_set_name(layers: list[str]) -> str:
    return "+".join(layers)


def fixed_layers(cfg: Config) -> list[str]:
    """The layer set with calibration off: `calibrate.fixed_layers`, or all of `cam.layers`."""
    return list(cfg.calibrate.fixed_layers or cfg.cam.layers)


def _threshold_keys(cfg: Config) -> dict[str, tuple[object, float, float]]:
    """{choice name: (its config value, the fixed value an "auto" takes without calibration, the
    margin added to its calibrated value)}."""
    return {"bg_threshold": (cfg.eval.bg_threshold, cfg.calibrate.fixed_bg_threshold, 0.0),
            "fg_threshold_high": (cfg.pseudo.fg_threshold_high, cfg.calibrate.fixed_fg_threshold_high,
                                  cfg.calibrate.teacher_margin)}


def calibrated_value(cfg: Config, calibrated: float, margin: float) -> dict:
    """A calibrated threshold as the stages use it: raised by its margin, below 1 (at 1 no pixel
    would be foreground)."""
    if not margin:
        return {"value": calibrated, "source": "calibrated"}
    return {"value": round(min(calibrated + margin, 1 - cfg.calibrate.step), 4),
            "source": f"calibrated + calibrate.teacher_margin {margin:g}"}


def used_choices(cfg: Config, choices: dict | None) -> dict[str, dict]:
    """Each choice's value and where it comes from: "set by hand" (a number in the config, or the
    layers with nothing to choose among), "calibrated" (an "auto" with calibrate's `choices`; the
    high threshold plus any teacher margin) or
    "fixed" (an "auto" with calibration off, `choices` None: calibrate.fixed_*)."""
    used = {}
    for name, (value, fixed, margin) in _threshold_keys(cfg).items():
        if value != AUTO:
            used[name] = {"value": float(value), "source": "set by hand"}
        elif choices is not None:
            used[name] = calibrated_value(cfg, choices[name]["calibrated"], margin)
        else:
            used[name] = {"value": fixed, "source": "fixed"}
    if len(layer_sets(cfg)) == 1:
        used["layers"] = {"value": list(cfg.cam.layers), "source": "set by hand"}
    elif choices is not None:
        used["layers"] = {"value": choices["layers"]["calibrated"], "source": "calibrated"}
    else:
        used["layers"] = {"value": fixed_layers(cfg), "source": "fixed"}
    return used


def read_choices(path: Path | None) -> dict | None:
    """The calibrate stage's choices file, None for no path (calibration off)."""
    return json.loads(Path(path).read_text()) if path is not None else None


def with_choices(cfg: Config, choices_file: Path | None) -> Config:
    """`cfg` with its "auto" thresholds replaced by the numbers `used_choices` gives, and cam.layers
    by the layer set it gives: what the stages that apply them read."""
    used = used_choices(cfg, read_choices(choices_file))
    return replace(cfg, cam=replace(cfg.cam, layers=used["layers"]["value"]),
                   eval=replace(cfg.eval, bg_threshold=used["bg_threshold"]["value"]),
                   pseudo=replace(cfg.pseudo, fg_threshold_high=used["fg_threshold_high"]["value"]))


def run_choices(cfg: Config, run: RunOutputs) -> Config:
    """`with_choices` for a run's config `cfg`, from its calibrate stage's choices where calibration
    is on and has run, else its fixed values (a run with a classifier only can label): for what
    reads a run from outside its stages (label, the benches)."""
    choices = run.path("calibrate", "choices")
    if cfg.calibrate.enabled and not choices.is_file():
        log.warning("%s: the run has no calibrated choices yet; its \"auto\" thresholds take "
                    "calibrate.fixed_* and its layers calibrate.fixed_layers (run its calibrate stage for its own)", choices)
    return with_choices(cfg, choices if cfg.calibrate.enabled and choices.is_file() else None)
