"""Stage `pseudo`: confident pseudo-masks `pseudo/<id>.png` (0 background, 255 ignore).

The CRF is single-threaded C++, so images are spread over a process pool; each worker writes its
masks itself, so memory does not grow with the dataset, and images already written are skipped.
"""
from __future__ import annotations

import time
from pathlib import Path

from pipeline import distributed
from pipeline.cam.seeds import cam_path, load_cams
from pipeline.config import CamConfig, Config
from pipeline.data import open_split
from pipeline.data.images import DataError, read_sized_image, skipping
from pipeline.refine.calibration import with_choices
from pipeline.refine.masks import CALIBRATION_INPUT, MASK_KEYS, MaskRule, mask_path, pseudo_rule, write_mask
from pipeline.runs import progress
from pipeline.workers import worker_pool

KIND = "sharded"
SHARD_FILES = "*.png"
FOLDER = "pseudo"
OUTPUTS = {"masks": "."}
INPUTS = {"seeds": ("cams", "seeds"), **CALIBRATION_INPUT}
KEYS = MASK_KEYS


def _write_one(image_file: Path, max_side: int, cams_file: Path, out_file: Path, rule: MaskRule,
               layers: CamConfig) -> str | None:
    """Write one pseudo-mask, made at the image's working size (as its seeds were), at the image
    file's size; a bad image is returned as its problem, not raised, since an exception would
    stop the stage before the other images are written."""
    try:
        image, size = read_sized_image(image_file, max_side)
    except DataError as error:
        return str(error)
    cams, classes = load_cams(cams_file, layers)
    write_mask(out_file, image, cams, classes, rule, size)
    return None


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    bad = skipping("pseudo")
    cfg = with_choices(cfg, inputs["calibration"])
    rule = pseudo_rule(cfg.pseudo)
    jobs = []
    for split in cfg.pseudo.splits:
        voc = open_split(cfg.data, split)
        for i in distributed.unwritten(voc.ids, lambda image_id: mask_path(out, image_id)):
            with bad.skip():
                jobs.append((voc.image_path(i), voc.max_side, cam_path(inputs["seeds"], i), mask_path(out, i), rule,
                             cfg.cam))
    began = time.perf_counter()
    with worker_pool(cfg.pseudo.workers) as workers:
        for problem in progress(workers.map(_write_one, jobs), total=len(jobs), desc="pseudo"):
            if problem:
                bad.add(problem)
    bad.raise_if_any()
    seconds = time.perf_counter() - began
    return {"images": len(list(out.glob(SHARD_FILES))), "written_now": len(jobs), "workers": workers.count,
            "images_per_second": round(len(jobs) / seconds, 1) if jobs else None}
