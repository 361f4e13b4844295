"""Stage `eval-pseudo`: pseudo-mask mIoU (255 counted as background, as IRN scores them) and the
precision and coverage of the confident (non-255) pixels, on `eval.split`, and on the
segmenter's val split too when the pseudo stages made masks for it: those are what the segmenter
must beat on the images it is scored on. The pseudo stage's masks are scored at the top level of
the results, the random walk's (pseudo-aff, with `affinity.enabled`) under "affinity". Its
variant `eval-pseudo-r2` scores the second round's masks (pseudo-r2)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.data import open_split
from pipeline.data.images import skipping
from pipeline.metrics import PseudoTally, iou_per_class
from pipeline.refine.masks import mask_path
from pipeline.runs import RESULTS, progress, write_json

GROUND_TRUTH = True
FOLDER = "eval/pseudo"
OUTPUTS = {"results": RESULTS}
INPUTS = {"masks": ("pseudo", "masks"), "affinity": ("pseudo-aff", "masks")}
KEYS = ("eval.split", "seg.val_split", "pseudo.splits")
# `eval-pseudo-r2`: the second round's masks, scored as the first round's
VARIANTS = {"r2": {"FOLDER": "eval/pseudo-r2", "SWITCH": "round2.enabled",
                   "INPUTS": {"masks": ("pseudo-r2", "masks")}}}


def val_split(cfg: Config) -> str | None:
    """The segmenter's val split where it has pseudo-masks, else None."""
    split = cfg.seg.val_split
    return split if split in cfg.pseudo.splits and split != cfg.eval.split else None


def score_split(cfg: Config, folder: Path, split: str) -> dict:
    voc = open_split(cfg.data, split)
    tally = PseudoTally(voc.num_classes + 1)
    bad = skipping("eval-pseudo")
    for image_id in progress(voc.ids, desc=f"eval-pseudo {split}"):
        with bad.skip():  # both reads come first: a bad image adds nothing to the counts
            pseudo = voc.read_working_mask(mask_path(folder, image_id), image_id)
            tally.add(voc.checked_mask(image_id, pseudo.shape), pseudo)
    bad.raise_if_any()
    names = ["background", *voc.class_names]
    return {"split": split, "images": len(voc), **tally.scores(),
            "per_class_iou": dict(zip(names, np.round(iou_per_class(tally.matrix), 4).tolist()))}


def score_folder(cfg: Config, folder: Path) -> dict:
    results = score_split(cfg, folder, cfg.eval.split)
    if val_split(cfg):
        results["val"] = score_split(cfg, folder, val_split(cfg))
    return results


def headline(results: dict) -> dict:
    metrics = {k: v for k, v in results.items() if k not in ("per_class_iou", "val")}
    if "val" in results:
        metrics["val_miou"] = results["val"]["miou"]
    return metrics


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    results = score_folder(cfg, inputs["masks"])
    metrics = headline(results)
    if inputs.get("affinity"):
        results["affinity"] = score_folder(cfg, inputs["affinity"])
        metrics["affinity"] = headline(results["affinity"])
    write_json(out / RESULTS, results)
    return metrics
