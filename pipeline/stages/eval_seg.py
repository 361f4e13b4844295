"""Stage `eval-seg`: the segmenter's mIoU on the val split against ground truth, and its
predictions as palette PNGs (`predictions/<id>.png`).

Predictions may be post-processed as DeepLab's are: softmax averaged with the mirrored image's
(`seg.eval_flip`), then the dense CRF the pseudo-masks get (`seg.eval_crf`, pseudo.crf_* params),
which makes each item's pixels agree on one class. The CRF runs on a process pool, as in `pseudo`;
without it the argmax runs here. Its variants score the second round's segmenter (`eval-seg-r2`)
and the upper bound's (`eval-seg-gt`) alike.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import distributed
from pipeline.config import Config
from pipeline.data import open_split
from pipeline.data.images import skipping
from pipeline.data.transforms import image_batches, normalised_batch
from pipeline.metrics import confusion, iou_per_class, mean_iou
from pipeline.models.checkpoints import load_segmenter
from pipeline.models.segmenter import predict_probs
from pipeline.refine.masks import MaskRule, crf_settings, mask_path, write_mask
from pipeline.runs import RESULTS, progress, write_json
from pipeline.workers import worker_pool

BATCH = 64

GROUND_TRUTH = True
FOLDER = "eval/seg"
OUTPUTS = {"results": RESULTS, "predictions": "predictions"}
INPUTS = {"segmenter": ("train-seg", "model")}
KEYS = ("seg.val_split", "seg.eval_flip", "seg.eval_crf", "pseudo.crf_gt_prob", "pseudo.crf_iterations",
        "pseudo.crf_bilateral_sxy", "pseudo.crf_bilateral_srgb")
# `eval-seg-r2` and `eval-seg-gt`: the second round's and the upper bound's segmenters
VARIANTS = {"r2": {"FOLDER": "eval/seg-r2", "SWITCH": "round2.enabled",
                   "INPUTS": {"segmenter": ("train-seg-r2", "model")}},
            "gt": {"FOLDER": "eval/seg-gt", "INPUTS": {"segmenter": ("train-seg-gt", "model")}}}


def prediction_jobs(cfg: Config, model, voc, out: Path, bad):
    """`predict_one`'s arguments for every val image: the segmenter's softmax over every class,
    predicted a batch at a time."""
    rule = MaskRule(crf=crf_settings(cfg.pseudo) if cfg.seg.eval_crf else None)
    classes = np.arange(voc.num_classes)
    for ids, images in image_batches(voc, voc.ids, BATCH, bad):
        probs = predict_probs(model, normalised_batch(images), cfg.seg.eval_flip).numpy()
        for image_id, image, p in zip(ids, images, probs):
            yield image_id, mask_path(out / "predictions", image_id), image, p, classes, rule, voc.file_shape(image_id)


def predict_one(image_id: str, *mask: tuple) -> tuple[str, np.ndarray]:
    """(the image's id, its prediction at the working size): `write_mask(*mask)`, which writes it
    at the file's size, the id kept for scoring it."""
    return image_id, write_mask(*mask)


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    voc = open_split(cfg.data, cfg.seg.val_split)
    n = voc.num_classes + 1
    matrix = np.zeros((n, n), np.int64)
    bad = skipping("eval-seg")
    # Without the CRF a prediction is an argmax, cheaper here than sent to a worker and back.
    with worker_pool(cfg.pseudo.workers if cfg.seg.eval_crf else 1) as workers:
        model, _ = load_segmenter(inputs["segmenter"], cfg)
        model.to(distributed.device(cfg.device))  # after the fork: no CRF worker inherits a CUDA context
        predictions = workers.map(predict_one, prediction_jobs(cfg, model, voc, out, bad))
        for image_id, pred in progress(predictions, total=len(voc), desc="eval-seg"):
            with bad.skip():
                matrix += confusion(voc.checked_mask(image_id, pred.shape), pred, n)
    bad.raise_if_any()
    names = ["background", *voc.class_names]
    results = {"split": cfg.seg.val_split, "images": len(voc),
               "flip": cfg.seg.eval_flip, "crf": cfg.seg.eval_crf,
               "miou": round(mean_iou(matrix), 4),
               "per_class_iou": dict(zip(names, np.round(iou_per_class(matrix), 4).tolist()))}
    write_json(out / RESULTS, results)
    return {k: v for k, v in results.items() if k != "per_class_iou"}
