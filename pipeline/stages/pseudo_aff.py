"""Stage `pseudo-aff`: pseudo-masks `pseudo-aff/<id>.png` from the seeds walked along the trained
affinities (IRN), for every split of `pseudo.splits`, made from the walked seeds exactly as the
pseudo stage makes them from the seeds (its thresholds, CRF and confidence band). Boundary maps
and walks run here in batches; the CRF runs in a process pool, one batch at a time, so memory
does not grow with the dataset. Images already written are skipped."""
from __future__ import annotations

import os
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pipeline import distributed
from pipeline.cam.seeds import cam_path, load_cams
from pipeline.config import Config, PseudoConfig
from pipeline.data.images import save_mask, skipping
from pipeline.data.transforms import normalised_batch
from pipeline.models.affinity_net import boundary_maps, classifier_encoder, load_affinity_net
from pipeline.refine.masks import MASK_KEYS, mask_path, pseudo_mask, unwritten_batches, walked_cams

SWITCH = "affinity.enabled"
KIND = "sharded"
SHARD_FILES = "*.png"
FOLDER = "pseudo-aff"
OUTPUTS = {"masks": "."}
INPUTS = {"affinity": ("train-aff", "model"), "seeds": ("cams", "seeds"), "classifier": ("train-cls", "model")}
KEYS = ("affinity.radius", "affinity.beta", "affinity.exp_times", "affinity.flip", *MASK_KEYS)


def _write_one(job: tuple[PseudoConfig, np.ndarray, np.ndarray, np.ndarray, Path]) -> None:
    settings, image, walked, classes, out_file = job
    save_mask(out_file, pseudo_mask(settings, image, walked, classes))


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    encoder = classifier_encoder(cfg.cls.arch, inputs["classifier"])
    net = load_affinity_net(inputs["affinity"], encoder)
    bad = skipping("pseudo-aff")
    written = 0
    workers = cfg.pseudo.workers or os.cpu_count() or 1
    with get_context("fork").Pool(workers) as pool:
        device = distributed.device(cfg.device)  # after the fork: no CRF worker inherits a CUDA context
        encoder.to(device)
        net.to(device)
        for _, ids, images in unwritten_batches(cfg, out, cfg.cam.batch_size, bad, "pseudo-aff"):
            boundaries = boundary_maps(encoder, net, normalised_batch(images), cfg.affinity.flip)
            jobs = []
            for image_id, image, boundary in zip(ids, images, boundaries):
                cams, classes = load_cams(cam_path(inputs["seeds"], image_id))
                jobs.append((cfg.pseudo, image, walked_cams(cfg.affinity, boundary, cams), classes,
                             mask_path(out, image_id)))
            pool.map(_write_one, jobs, chunksize=max(1, len(jobs) // workers))
            written += len(jobs)
    bad.raise_if_any()
    return {"images": len(list(out.glob(SHARD_FILES))), "written_now": written, "workers": workers}
