"""Stage `eval-seg`: the segmenter's mIoU on the val split against ground truth, and its
predictions as palette PNGs (`predictions/<id>.png`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.data.transforms import image_batches, normalised_batch
from pipeline.data.voc import open_split, save_mask, skipping
from pipeline.metrics import confusion, iou_per_class, mean_iou
from pipeline.models.segmenter import predict
from pipeline.runs import progress, write_json
from pipeline.stages import train_seg

RESULTS = "results.json"
BATCH = 64


def OUTPUT(cfg: Config) -> str:
    return "eval/seg" if cfg.seg.labels == "pseudo" else "eval/seg-gt"


def UPSTREAM(cfg: Config) -> list[str]:
    return ["train-seg"]


def SECTION(cfg: Config) -> dict:
    return {"val_split": cfg.seg.val_split, "labels": cfg.seg.labels}


def run(cfg: Config, out: Path, run_dir: Path) -> dict:
    model, _ = train_seg.load_segmenter(run_dir / train_seg.OUTPUT(cfg), cfg)
    voc = open_split(cfg.data, cfg.seg.val_split)
    n = voc.num_classes + 1
    matrix = np.zeros((n, n), np.int64)
    bad = skipping("eval-seg")
    for ids, images in progress(image_batches(voc, voc.ids, BATCH, bad), desc="eval-seg"):
        predictions = predict(model, normalised_batch(images)).numpy().astype(np.uint8)
        for image_id, image, pred in zip(ids, images, predictions):
            save_mask(out / "predictions" / f"{image_id}.png", pred)
            with bad.skip():
                matrix += confusion(voc.checked_mask(image_id, image.shape), pred, n)
    bad.raise_if_any()
    names = ["background", *voc.class_names]
    results = {"split": cfg.seg.val_split, "labels": cfg.seg.labels, "images": len(voc),
               "miou": round(mean_iou(matrix), 4),
               "per_class_iou": dict(zip(names, np.round(iou_per_class(matrix), 4).tolist()))}
    write_json(out / RESULTS, results)
    return {k: v for k, v in results.items() if k != "per_class_iou"}
