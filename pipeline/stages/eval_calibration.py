"""Stage `eval-calibration`: how good the calibrated choices are, scored on ground truth beside
the fixed ones (calibrate.fixed_*) and the oracle's (the best on ground truth),
on `eval.split`. Each choice is scored with the layer set of the same kind (the calibrated
threshold on the calibrated set, and so on).

Layer sets: each candidate's seeds at their best threshold; the oracle's set is the best of them.
Seeds: mIoU at every threshold of the calibration's grid. Pseudo-masks: mIoU as eval-pseudo
counts it (255 as background), which depends on the high threshold alone: a pixel is a class
where the label CRF at the high threshold says so. A CRF per image and threshold is too dear for
the whole grid, so the oracle is searched on the oracle's layer set alone, coarse to fine: every
`COARSE`th threshold, then every one within `COARSE` steps of the best of those (on a curve with
two far-apart peaks it may settle on the lower one).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.cam import normalise_max
from pipeline.cam.seeds import cam_path, load_cam_sets, load_cams
from pipeline.config import Config
from pipeline.data import open_split
from pipeline.metrics import confusion, mean_iou, sweep_confusions
from pipeline.refine.calibration import (fixed_layers, layer_set_name, layer_sets, read_choices, threshold_grids,
                                         used_choices)
from pipeline.refine.masks import MASK_KEYS, MaskRule, foreground_labels, pseudo_rule
from pipeline.runs import RESULTS, progress, write_json
from pipeline.workers import worker_pool

GROUND_TRUTH = True
SWITCH = "eval.calibration"
FOLDER = "eval/calibration"
OUTPUTS = {"results": RESULTS}
INPUTS = {"seeds": ("cams", "seeds"), "calibration": ("calibrate", "choices")}
KEYS = ("eval.split", "eval.bg_threshold", "calibrate.step", "calibrate.max_threshold",
        "calibrate.fixed_bg_threshold", "calibrate.choose_layers", "calibrate.fixed_layers", "cam.layers", "cam.fuse",
        *MASK_KEYS)
COARSE = 5


def _foreground_confusions(image: np.ndarray, cams: np.ndarray, classes: np.ndarray, gt: np.ndarray,
                           rule: MaskRule, highs: list[float], n: int) -> np.ndarray:
    """[T, n, n]: the confusion of one image's pseudo-mask labels at each high threshold."""
    return np.stack([confusion(gt, foreground_labels(image, cams, classes, rule, high), n) for high in highs])


def mask_mious(cfg: Config, seeds: Path, layers: list[str], highs: list[float]) -> dict[float, float]:
    """Pseudo-mask mIoU of `eval.split` at each high threshold of `highs`, from the seeds of `layers`."""
    if not highs:
        return {}
    voc = open_split(cfg.data, cfg.eval.split)
    n = voc.num_classes + 1
    rule = pseudo_rule(cfg.pseudo)
    settings = replace(cfg.cam, layers=layers)

    def jobs():
        for image_id in voc.ids:
            cams, classes = load_cams(cam_path(seeds, image_id), settings)
            yield voc.image(image_id), cams, classes, voc.checked_mask(image_id, cams.shape[1:]), \
                rule, highs, n
    total = np.zeros((len(highs), n, n), np.int64)
    with worker_pool(cfg.pseudo.workers) as workers:
        for counts in progress(workers.map(_foreground_confusions, jobs()), total=len(voc.ids),
                               desc=f"eval-calibration, {layer_set_name(layers)}, {len(highs)} thresholds"):
            total += counts
    return {high: round(mean_iou(matrix), 4) for high, matrix in zip(highs, total)}


def seed_mious(cfg: Config, seeds: Path, sets: list[list[str]], grid: np.ndarray) -> dict[str, dict[float, float]]:
    """{layer set's name: {threshold: seed mIoU}} of `eval.split` at each threshold of `grid` (the
    maps max-normalised), for every layer set of `sets`."""
    voc = open_split(cfg.data, cfg.eval.split)
    n = voc.num_classes + 1
    sweeps = np.zeros((len(sets), len(grid), n, n), np.int64)
    for image_id in progress(voc.ids, desc=f"eval-calibration seeds, {len(sets)} layer sets"):
        fused, classes = load_cam_sets(cam_path(seeds, image_id), sets, cfg.cam.fuse)
        gt = voc.checked_mask(image_id, fused[0].shape[1:])
        for sweep, cams in zip(sweeps, fused):
            sweep += sweep_confusions(gt, normalise_max(torch.from_numpy(cams)).numpy(), classes, grid, n)
    return {layer_set_name(layers): {float(t): round(mean_iou(m), 4) for t, m in zip(grid, sweep)}
            for layers, sweep in zip(sets, sweeps)}


def on_grid_best(scores: dict[float, float], grid: np.ndarray) -> float:
    """The threshold of `grid` with the best score (the lowest, on a tie)."""
    return max((t for t in scores if np.isclose(grid, t).any()), key=lambda t: (scores[t], -t))


def compared(picks: dict[str, object], score, used_source: str) -> dict:
    """The oracle's, calibrated, fixed and used choices of `picks` ({name: value, None where there
    is none}), each with its mIoU `score(name, value)`."""
    return {**picks, "used_source": used_source,
            **{f"miou_{name}": score(name, value) if value is not None else None for name, value in picks.items()}}


def mask_scores(cfg: Config, seeds: Path, picks: dict[str, tuple[list[str], float]],
                oracle_layers: list[str]) -> tuple[dict[str, dict[float, float]], float]:
    """({layer set's name: {high threshold: pseudo-mask mIoU}}, the oracle's high threshold): each
    pick's (layers, threshold) scored, and the oracle searched on `oracle_layers`, coarse to fine.
    One pass of label CRFs per layer set, then one for the fine search."""
    highs = threshold_grids(cfg)["fg_threshold_high"]
    wanted = {layer_set_name(oracle_layers): (oracle_layers, set(highs[::COARSE].tolist()))}
    for layers, high in picks.values():
        wanted.setdefault(layer_set_name(layers), (layers, set()))[1].add(high)
    scores = {name: mask_mious(cfg, seeds, layers, sorted(values)) for name, (layers, values) in wanted.items()}
    oracle = scores[layer_set_name(oracle_layers)]
    coarse_best = max(highs[::COARSE], key=lambda t: oracle[float(t)])
    fine = [float(t) for t in highs if abs(t - coarse_best) < COARSE * cfg.calibrate.step - 1e-9]
    oracle.update(mask_mious(cfg, seeds, oracle_layers, [t for t in fine if t not in oracle]))
    return scores, on_grid_best(oracle, highs)


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    choices = read_choices(inputs["calibration"])
    used = used_choices(cfg, choices)
    grid = threshold_grids(cfg)
    sets = layer_sets(cfg)
    calibrated = {name: choices[name]["calibrated"] if choices else None for name in (*grid, "layers")}
    layers_of = {"calibrated": calibrated["layers"], "fixed": fixed_layers(cfg), "used": used["layers"]["value"]}
    scored_sets = sets + ([layers_of["fixed"]] if layers_of["fixed"] not in sets else [])  # the used one is among them

    seeds_at = seed_mious(cfg, inputs["seeds"], scored_sets, np.union1d(
        grid["bg_threshold"], [cfg.calibrate.fixed_bg_threshold, used["bg_threshold"]["value"]]))
    set_best = {name: scores[on_grid_best(scores, grid["bg_threshold"])] for name, scores in seeds_at.items()}
    oracle_layers = max(sets, key=lambda layers: set_best[layer_set_name(layers)])
    layers_of["oracle"] = oracle_layers
    oracle_seeds = seeds_at[layer_set_name(oracle_layers)]
    bg = {"oracle": on_grid_best(oracle_seeds, grid["bg_threshold"]), "calibrated": calibrated["bg_threshold"],
          "fixed": cfg.calibrate.fixed_bg_threshold, "used": used["bg_threshold"]["value"]}
    high = {"calibrated": calibrated["fg_threshold_high"], "fixed": cfg.calibrate.fixed_fg_threshold_high,
            "used": used["fg_threshold_high"]["value"]}
    masks_at, high["oracle"] = mask_scores(cfg, inputs["seeds"], {name: (layers_of[name], t) for name, t in high.items()
                                                                   if t is not None}, oracle_layers)

    def scored(table: dict[str, dict[float, float]]):
        return lambda name, value: table[layer_set_name(layers_of[name])][value]
    results = {
        "split": cfg.eval.split,
        "layers": {**compared(layers_of, lambda name, layers: set_best[layer_set_name(layers)],
                              used["layers"]["source"]), "sweep": set_best},
        "bg_threshold": {**compared(bg, scored(seeds_at), used["bg_threshold"]["source"]),
                         "sweep": {f"{t:.2f}": m for t, m in sorted(oracle_seeds.items())}},
        "fg_threshold_high": {**compared(high, scored(masks_at), used["fg_threshold_high"]["source"]),
                              "sweep": {f"{t:.2f}": m for t, m in sorted(masks_at[layer_set_name(oracle_layers)].items())}},
    }
    write_json(out / RESULTS, results)
    return {name: {k: v for k, v in scores.items() if k != "sweep"} for name, scores in results.items()
            if name != "split"}
