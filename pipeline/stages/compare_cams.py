"""Stage `compare-cams`: the CAM methods of `eval.compare_methods` (all six by default) from
several layer sets, side by side.

Every method of `eval.compare_methods` and layer set of `eval.compare_layer_sets` is computed from
the one trained classifier on the first `eval.compare_images` images of the eval split, with the
configured scales, flip and fusion, and scored like the seeds (best swept background threshold).
Nothing per image is stored: only `results.json`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import distributed
from pipeline.cam import fuse_layers, normalise_max
from pipeline.cam.seeds import cam_head, layer_batch
from pipeline.config import Config
from pipeline.data import open_split
from pipeline.data.transforms import image_batches, normalised_batch
from pipeline.metrics import sweep_confusions, swept_best, thresholds
from pipeline.models.checkpoints import load_classifier
from pipeline.runs import RESULTS, progress, write_json

GROUND_TRUTH = True
FOLDER = "eval/compare-cams"
OUTPUTS = {"results": RESULTS}
INPUTS = {"classifier": ("train-cls", "model")}
KEYS = ("cam", "eval.split", "eval.sweep_max", "eval.sweep_step", "eval.compare_methods",
        "eval.compare_layer_sets", "eval.compare_images")


def compare_settings(cfg: Config, classifier: Path, voc, grid: np.ndarray) -> list[dict]:
    """Swept-best seed mIoU of every method in `eval.compare_methods` and layer set in
    `eval.compare_layer_sets`, on the first `eval.compare_images` images, from one classifier.

    Maps are computed once per method for all the layers the sets use; each set is then fused
    from them, so a set costs a fusion and a sweep, not a forward and backward pass.
    """
    ids = voc.ids[:cfg.eval.compare_images]
    model, _ = load_classifier(classifier, cfg)
    model.to(distributed.device(cfg.device))
    sets = [list(layers) for layers in cfg.eval.compare_layer_sets]
    layers = sorted({name for layer_set in sets for name in layer_set})
    n = voc.num_classes + 1
    rows = []
    for method in cfg.eval.compare_methods:
        head = cam_head(model, cfg, layers) if method == "cam" else cfg.cam.head
        sweeps = np.zeros((len(sets), len(grid), n, n), np.int64)
        for batch_ids, images in progress(image_batches(voc, ids, cfg.cam.batch_size),
                                          desc=f"compare {method}"):
            label_sets = [voc.labels(i) for i in batch_ids]
            batch = normalised_batch(images)
            maps = layer_batch(model, batch, label_sets, cfg.cam, head, layers, method)
            for index, layer_set in enumerate(sets):
                fused = normalise_max(fuse_layers({name: maps[name] for name in layer_set},
                                                  tuple(batch.shape[-2:]), cfg.cam.fuse)).numpy()
                for row, (image_id, labels) in enumerate(zip(batch_ids, label_sets)):
                    sweeps[index] += sweep_confusions(voc.checked_mask(image_id, fused.shape[-2:]),
                                                      fused[row, :len(labels)],
                                                      labels, grid, n)
        for layer_set, sweep in zip(sets, sweeps):
            miou, threshold = swept_best(sweep, grid)
            rows.append({"method": method, "layers": layer_set, "best_miou": miou,
                         "best_threshold": threshold})
    return rows


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    voc = open_split(cfg.data, cfg.eval.split)
    rows = compare_settings(cfg, inputs["classifier"], voc, thresholds(cfg.eval)) if cfg.eval.compare_images > 0 else []
    results = {"split": cfg.eval.split, "images": min(len(voc), cfg.eval.compare_images),
               "scales": list(cfg.cam.scales), "flip": cfg.cam.flip, "fuse": cfg.cam.fuse, "rows": rows}
    write_json(out / RESULTS, results)
    return {"images": results["images"], "settings": len(rows)}
