"""Stage `pseudo-aff`: pseudo-masks `pseudo-aff/<id>.png` from the seeds walked along the trained
affinities (IRN), for every split of `pseudo.splits`, made from the walked seeds exactly as the
pseudo stage makes them from the seeds (its thresholds, CRF and confidence band). Boundary maps
and walks run here in batches while a process pool runs the CRF with a few images in flight, so
memory does not grow with the dataset. Images already written are skipped."""
from __future__ import annotations

from pathlib import Path

from pipeline import distributed
from pipeline.cam.seeds import cam_path, load_cams
from pipeline.config import Config
from pipeline.data.images import skipping
from pipeline.data.transforms import normalised_batch
from pipeline.models.affinity_net import boundary_maps, classifier_encoder, load_affinity_net
from pipeline.refine.calibration import with_choices
from pipeline.refine.masks import CALIBRATION_INPUT, MASK_KEYS, mask_path, pseudo_rule, unwritten_batches, walked_cams, write_mask
from pipeline.workers import worker_pool

SWITCH = "affinity.enabled"
KIND = "sharded"
SHARD_FILES = "*.png"
FOLDER = "pseudo-aff"
OUTPUTS = {"masks": "."}
INPUTS = {"affinity": ("train-aff", "model"), "seeds": ("cams", "seeds"), "classifier": ("train-cls", "model"),
          **CALIBRATION_INPUT}
KEYS = ("affinity.radius", "affinity.beta", "affinity.exp_times", "affinity.flip", *MASK_KEYS)


def mask_jobs(cfg: Config, encoder, net, out: Path, seeds: Path, bad):
    """`write_mask`'s arguments for every image left to write, a batch of walks at a time."""
    rule = pseudo_rule(cfg.pseudo)
    for voc, ids, images in unwritten_batches(cfg, out, cfg.cam.batch_size, bad, "pseudo-aff"):
        boundaries = boundary_maps(encoder, net, normalised_batch(images), cfg.affinity.flip)
        for image_id, image, boundary in zip(ids, images, boundaries):
            cams, classes = load_cams(cam_path(seeds, image_id), cfg.cam)
            yield (mask_path(out, image_id), image, walked_cams(cfg.affinity, boundary, cams), classes, rule,
                   voc.file_shape(image_id))


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    cfg = with_choices(cfg, inputs["calibration"])
    encoder = classifier_encoder(cfg.cls.arch, inputs["classifier"])
    net = load_affinity_net(inputs["affinity"], encoder)
    bad = skipping("pseudo-aff")
    with worker_pool(cfg.pseudo.workers) as workers:
        device = distributed.device(cfg.device)  # after the fork: no CRF worker inherits a CUDA context
        encoder.to(device)
        net.to(device)
        written = sum(1 for _ in workers.map(write_mask, mask_jobs(cfg, encoder, net, out, inputs["seeds"], bad)))
    bad.raise_if_any()
    return {"images": len(list(out.glob(SHARD_FILES))), "written_now": written, "workers": workers.count}
