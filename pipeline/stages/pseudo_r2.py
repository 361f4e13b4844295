"""Stage `pseudo-r2`: the second round's pseudo-masks `pseudo-r2/<id>.png` (self-training), for
every split of `pseudo.splits`: the first round's segmenter predicts each image (flip-averaged
with `round2.flip`), its probabilities are restricted to the image's known classes, and they
become a pseudo-mask as the seeds do in the pseudo stage (its CRF and confidence band). The
segmenter runs here in batches; the CRF in a process pool, one batch at a time. Images already
written are skipped."""
from __future__ import annotations

import os
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pipeline import distributed
from pipeline.config import Config, PseudoConfig
from pipeline.data.images import save_mask, skipping
from pipeline.data.transforms import normalised_batch
from pipeline.models.checkpoints import load_segmenter
from pipeline.models.segmenter import predict_probs
from pipeline.refine.masks import MASK_KEYS, known_class_probs, mask_path, segmenter_mask, unwritten_batches

SWITCH = "round2.enabled"
KIND = "sharded"
SHARD_FILES = "*.png"
BATCH = 64
FOLDER = "pseudo-r2"
OUTPUTS = {"masks": "."}
INPUTS = {"segmenter": ("train-seg", "model")}
KEYS = ("round2.flip", *MASK_KEYS)


def _write_one(job: tuple[PseudoConfig, np.ndarray, np.ndarray, np.ndarray, Path]) -> None:
    settings, image, probs, classes, out_file = job
    save_mask(out_file, segmenter_mask(settings, image, probs, classes))


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    bad = skipping("pseudo-r2")
    written = 0
    workers = cfg.pseudo.workers or os.cpu_count() or 1
    # The workers run the CRF alone (no torch), so forking from a process with torch threads is safe.
    with get_context("fork").Pool(workers) as pool:
        model, _ = load_segmenter(inputs["segmenter"], cfg)
        model.to(distributed.device(cfg.device))  # after the fork: no CRF worker inherits a CUDA context
        for voc, ids, images in unwritten_batches(cfg, out, BATCH, bad, "pseudo-r2"):
            probs = predict_probs(model, normalised_batch(images), cfg.round2.flip).numpy()
            jobs = [(cfg.pseudo, image, known_class_probs(p, voc.labels(i)), voc.labels(i), mask_path(out, i))
                    for i, image, p in zip(ids, images, probs)]
            pool.map(_write_one, jobs, chunksize=max(1, len(jobs) // workers))
            written += len(jobs)
    bad.raise_if_any()
    return {"images": len(list(out.glob(SHARD_FILES))), "written_now": written, "workers": workers}
