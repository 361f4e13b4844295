"""Stage `eval-pseudo`: pseudo-mask mIoU (255 counted as background, as IRN scores them) and the
precision and coverage of the confident (non-255) pixels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.data.voc import open_split, read_mask, skipping
from pipeline.metrics import iou_per_class, pseudo_counts, pseudo_scores
from pipeline.runs import progress, write_json
from pipeline.stages.pseudo import mask_path

RESULTS = "results.json"


def OUTPUT(cfg: Config) -> str:
    return "eval/pseudo"


def UPSTREAM(cfg: Config) -> list[str]:
    return ["pseudo"]


def SECTION(cfg: Config) -> dict:
    return {"split": cfg.eval.split}


def run(cfg: Config, out: Path, run_dir: Path) -> dict:
    voc = open_split(cfg.data, cfg.eval.split)
    n = voc.num_classes + 1
    matrix, counts = np.zeros((n, n), np.int64), np.zeros(3, np.int64)
    bad = skipping("eval-pseudo")
    for image_id in progress(voc.ids, desc="eval-pseudo"):
        with bad.skip():  # both reads come first: a bad image adds nothing to the counts
            pseudo = read_mask(mask_path(run_dir / "pseudo", image_id))
            gt = voc.checked_mask(image_id, pseudo.shape)  # a pseudo-mask has its image's size
            image_matrix, image_counts = pseudo_counts(gt, pseudo, n)
            matrix += image_matrix
            counts += image_counts
    bad.raise_if_any()
    names = ["background", *voc.class_names]
    results = {
        "split": cfg.eval.split, "images": len(voc), **pseudo_scores(matrix, counts),
        "per_class_iou": dict(zip(names, np.round(iou_per_class(matrix), 4).tolist())),
    }
    write_json(out / RESULTS, results)
    return {k: v for k, v in results.items() if k != "per_class_iou"}
