"""Stage `eval-seg`: the segmenter's mIoU on the val split against ground truth, and its
predictions as palette PNGs (`predictions/<id>.png`).

Predictions may be post-processed as DeepLab's are: softmax averaged with the mirrored image's
(`seg.eval_flip`), then the dense CRF the pseudo-masks get (`seg.eval_crf`, pseudo.crf_* params),
which makes each item's pixels agree on one class. The CRF runs on a process pool, as in `pseudo`.
Its variants score the second round's segmenter (`eval-seg-r2`) and the upper bound's
(`eval-seg-gt`) alike.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pipeline import distributed
from pipeline.config import Config
from pipeline.data import open_split
from pipeline.data.images import save_mask, skipping
from pipeline.data.transforms import image_batches, normalised_batch
from pipeline.metrics import confusion, iou_per_class, mean_iou
from pipeline.models.checkpoints import load_segmenter
from pipeline.models.segmenter import predict_probs
from pipeline.refine.crf import dense_crf
from pipeline.refine.masks import crf_settings, mask_path
from pipeline.runs import RESULTS, progress, write_json

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


def _crf_labels(job: tuple[np.ndarray, np.ndarray, dict]) -> np.ndarray:
    image, probs, params = job
    return dense_crf(image, probs, preset="label", **params).argmax(0)


def label_batches(cfg: Config, model, voc, bad, pool):
    """(ids, images, uint8 label maps) over the val split, post-processed as configured."""
    params = crf_settings(cfg.pseudo)
    for ids, images in image_batches(voc, voc.ids, BATCH, bad):
        probs = predict_probs(model, normalised_batch(images), cfg.seg.eval_flip).numpy()
        if cfg.seg.eval_crf:
            labels = pool.map(_crf_labels, [(image, p, params) for image, p in zip(images, probs)])
        else:
            labels = list(probs.argmax(1))
        yield ids, images, [label.astype(np.uint8) for label in labels]


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    voc = open_split(cfg.data, cfg.seg.val_split)
    n = voc.num_classes + 1
    matrix = np.zeros((n, n), np.int64)
    bad = skipping("eval-seg")
    # The workers run the CRF alone (no torch), so forking from a process with torch threads is safe.
    pool = get_context("fork").Pool(cfg.pseudo.workers or os.cpu_count() or 1) if cfg.seg.eval_crf else None
    with pool or nullcontext():
        model, _ = load_segmenter(inputs["segmenter"], cfg)
        model.to(distributed.device(cfg.device))  # after the fork: no CRF worker inherits a CUDA context
        for ids, images, predictions in progress(label_batches(cfg, model, voc, bad, pool), desc="eval-seg"):
            for image_id, image, pred in zip(ids, images, predictions):
                save_mask(mask_path(out / "predictions", image_id), pred)
                with bad.skip():
                    matrix += confusion(voc.checked_mask(image_id, image.shape), pred, n)
    bad.raise_if_any()
    names = ["background", *voc.class_names]
    results = {"split": cfg.seg.val_split, "images": len(voc),
               "flip": cfg.seg.eval_flip, "crf": cfg.seg.eval_crf,
               "miou": round(mean_iou(matrix), 4),
               "per_class_iou": dict(zip(names, np.round(iou_per_class(matrix), 4).tolist()))}
    write_json(out / RESULTS, results)
    return {k: v for k, v in results.items() if k != "per_class_iou"}
