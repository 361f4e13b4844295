"""Stage `pseudo-r2`: the second round's pseudo-masks `pseudo-r2/<id>.png` (self-training), for
every split of `pseudo.splits`: the first round's segmenter predicts each image (flip-averaged
with `round2.flip`), its probabilities are restricted to the image's known classes, and they
become a pseudo-mask as the seeds do in the pseudo stage (its CRF and confidence band). The
segmenter runs here in batches while a process pool runs the CRF, with a few images in flight.
Images already written are skipped."""
from __future__ import annotations

from pathlib import Path

from pipeline import distributed
from pipeline.config import Config
from pipeline.data.images import skipping
from pipeline.models.checkpoints import load_segmenter
from pipeline.refine.calibration import with_choices
from pipeline.refine.masks import CALIBRATION_INPUT, MASK_KEYS, mask_path, pseudo_rule, segmenter_scores, unwritten_batches, write_mask
from pipeline.workers import worker_pool

SWITCH = "round2.enabled"
KIND = "sharded"
SHARD_FILES = "*.png"
BATCH = 64
FOLDER = "pseudo-r2"
OUTPUTS = {"masks": "."}
INPUTS = {"segmenter": ("train-seg", "model"), **CALIBRATION_INPUT}
KEYS = ("round2.flip", *MASK_KEYS)


def mask_jobs(cfg: Config, model, out: Path, bad):
    """`write_mask`'s arguments for every image left to write, a batch of segmenter scores at a time."""
    rule = pseudo_rule(cfg.pseudo)
    for voc, ids, images in unwritten_batches(cfg, out, BATCH, bad, "pseudo-r2"):
        label_sets = [voc.labels(i) for i in ids]
        scores = segmenter_scores(model, images, label_sets, cfg.round2.flip)
        for image_id, image, maps, classes in zip(ids, images, scores, label_sets):
            yield mask_path(out, image_id), image, maps, classes, rule, voc.file_shape(image_id)


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    cfg = with_choices(cfg, inputs["calibration"])
    bad = skipping("pseudo-r2")
    with worker_pool(cfg.pseudo.workers) as workers:
        model, _ = load_segmenter(inputs["segmenter"], cfg)
        model.to(distributed.device(cfg.device))  # after the fork: no CRF worker inherits a CUDA context
        written = sum(1 for _ in workers.map(write_mask, mask_jobs(cfg, model, out, bad)))
    bad.raise_if_any()
    return {"images": len(list(out.glob(SHARD_FILES))), "written_now": written, "workers": workers.count}
