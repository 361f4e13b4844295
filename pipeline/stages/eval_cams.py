"""Stage `eval-cams`: seed mIoU over a sweep of background thresholds and at the run's own
(`eval.bg_threshold` set by hand, else calibrated, else calibrate's fixed value; reported as
"configured"), with two trivial baselines.

Baselines: "background" predicts background everywhere; "fill" paints the image's first present
class over the whole image (what a seed that localises nothing at all would give).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cam import normalise_max
from pipeline.cam.seeds import cam_path, load_cams
from pipeline.config import Config
from pipeline.data import open_split
from pipeline.data.images import skipping
from pipeline.metrics import confusion, iou_per_class, mean_iou, sweep_confusions, thresholds
from pipeline.refine.calibration import read_choices, used_choices, with_choices
from pipeline.runs import RESULTS, progress, write_json

GROUND_TRUTH = True
FOLDER = "eval/cams"
OUTPUTS = {"results": RESULTS}
INPUTS = {"seeds": ("cams", "seeds"), "calibration": ("calibrate", "choices")}
# the side-by-side comparison's keys (eval.compare_*) belong to compare-cams: editing them reruns only it
KEYS = ("eval.split", "eval.bg_threshold", "eval.sweep_max", "eval.sweep_step", "calibrate.fixed_bg_threshold",
        "calibrate.fixed_layers")


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    import torch

    voc = open_split(cfg.data, cfg.eval.split)
    n = voc.num_classes + 1
    used = used_choices(cfg, read_choices(inputs["calibration"]))["bg_threshold"]
    cfg = with_choices(cfg, inputs["calibration"])  # the seeds of the run's layer set
    grid = np.union1d(thresholds(cfg.eval), [used["value"]])  # the run's threshold scored exactly
    sweep = np.zeros((len(grid), n, n), np.int64)
    background = np.zeros((n, n), np.int64)
    fill = np.zeros((n, n), np.int64)
    bad = skipping("eval-cams")
    for image_id in progress(voc.ids, desc="eval-cams"):
        with bad.skip():  # both reads come first: a bad image adds nothing to the counts
            cams, classes = load_cams(cam_path(inputs["seeds"], image_id), cfg.cam)
            gt = voc.checked_mask(image_id, cams.shape[1:])  # seeds have the image's working size
            cams = normalise_max(torch.from_numpy(cams)).numpy()
            sweep += sweep_confusions(gt, cams, classes, grid, n)
            background += confusion(gt, np.zeros_like(gt), n)
            # an image's lowest class painted over it; a negative's is background
            fill += confusion(gt, np.full_like(gt, classes.min() + 1 if classes.size else 0), n)
    bad.raise_if_any()
    mious = np.array([mean_iou(m) for m in sweep])
    best = int(np.argmax(mious))
    configured = int(np.searchsorted(grid, used["value"]))
    names = ["background", *voc.class_names]
    results = {
        "split": cfg.eval.split, "images": len(voc),
        "method": cfg.cam.method, "layers": list(cfg.cam.layers), "fuse": cfg.cam.fuse,
        "sweep": {f"{t:.2f}": round(float(m), 4) for t, m in zip(grid, mious)},
        "best_threshold": float(grid[best]), "best_miou": round(float(mious[best]), 4),
        "configured_threshold": float(grid[configured]),
        "configured_miou": round(float(mious[configured]), 4),
        "configured_source": used["source"],
        "per_class_iou_best": dict(zip(names, np.round(iou_per_class(sweep[best]), 4).tolist())),
        "baseline_background_miou": round(mean_iou(background), 4),
        "baseline_fill_miou": round(mean_iou(fill), 4),
    }
    write_json(out / RESULTS, results)
    return {k: v for k, v in results.items() if k not in ("sweep", "per_class_iou_best")}
