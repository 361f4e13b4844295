"""Stage `pseudo`: confident pseudo-masks `pseudo/<id>.png` (0 background, 255 ignore).

The CRF is single-threaded C++, so images are spread over a process pool; each worker writes its
masks itself, so memory does not grow with the dataset, and images already written are skipped.
"""
from __future__ import annotations

import os
import time
from multiprocessing import get_context
from pathlib import Path

from pipeline import distributed
from pipeline.cam.seeds import cam_path, load_cams
from pipeline.config import Config, PseudoConfig
from pipeline.data import open_split
from pipeline.data.images import DataError, read_image, save_mask, skipping
from pipeline.refine.masks import MASK_KEYS, mask_path, pseudo_mask
from pipeline.runs import progress

KIND = "sharded"
SHARD_FILES = "*.png"
FOLDER = "pseudo"
OUTPUTS = {"masks": "."}
INPUTS = {"seeds": ("cams", "seeds")}
KEYS = MASK_KEYS


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


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    bad = skipping("pseudo")
    jobs = []
    for split in cfg.pseudo.splits:
        voc = open_split(cfg.data, split)
        for i in distributed.shard(voc.ids):
            if not mask_path(out, i).is_file():
                with bad.skip():
                    jobs.append((cfg.pseudo, voc.image_path(i), cam_path(inputs["seeds"], i),
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
    return {"images": len(list(out.glob(SHARD_FILES))), "written_now": len(jobs), "workers": workers,
            "images_per_second": round(len(jobs) / seconds, 1) if jobs else None}
