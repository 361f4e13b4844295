"""Stage `cams`: seeds for every present class of every image, stored as `cams/<id>.npz` (the
format is in `pipeline.cam.seeds`). Images already written are skipped, so a killed run resumes.
"""
from __future__ import annotations

import time
from pathlib import Path

from pipeline import distributed
from pipeline.cam.seeds import cam_head, cam_path, save_cams, seeds_and_layers
from pipeline.config import Config
from pipeline.data import open_split
from pipeline.data.images import skipping
from pipeline.data.transforms import image_batches
from pipeline.models.checkpoints import load_classifier
from pipeline.runs import progress

KIND = "sharded"
SHARD_FILES = "*.npz"
FOLDER = "cams"
OUTPUTS = {"seeds": "."}
INPUTS = {"classifier": ("train-cls", "model")}
KEYS = ("cam",)


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    model, _ = load_classifier(inputs["classifier"], cfg)
    model.to(distributed.device(cfg.device))  # maps come back to the CPU in layer_batch
    head = cam_head(model, cfg, list(cfg.cam.layers)) if cfg.cam.method == "cam" else cfg.cam.head
    bad = skipping("cams")
    written, began = 0, time.perf_counter()
    for split in cfg.cam.splits:
        voc = open_split(cfg.data, split)
        labels_of = {}
        for image_id in distributed.shard(voc.ids):
            if not cam_path(out, image_id).is_file():
                with bad.skip():
                    labels_of[image_id] = voc.labels(image_id)
        batches = image_batches(voc, list(labels_of), cfg.cam.batch_size, bad)
        for ids, images in progress(batches, desc=f"cams {split}"):
            label_sets = [labels_of[i] for i in ids]
            fused, per_layer = seeds_and_layers(model, images, label_sets, cfg, head)
            for image_id, labels, maps, layer_maps in zip(ids, label_sets, fused, per_layer):
                save_cams(cam_path(out, image_id), maps, labels, cfg.cam, layer_maps)
                written += 1
    bad.raise_if_any()
    seconds = time.perf_counter() - began
    total = len(list(out.glob(SHARD_FILES)))
    return {"images": total, "written_now": written,
            "images_per_second": round(written / seconds, 1) if written else None}
