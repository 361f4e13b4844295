"""The seed and pseudo-mask grid of `make bench`: method x layer set x CRF, one trained classifier.

For every CAM method (`eval.compare_methods`) and layer set (`eval.compare_layer_sets`, with the
run's scales, flip and fusion) on the first `--images` images of the eval split: the swept-best
seed mIoU and threshold; then pseudo-masks, without and with the CRF, scored as eval-pseudo scores
them (mIoU with 255 as background, precision and coverage of confident pixels); and seconds per
image (CAMs for that layer set, plus the pseudo-masks on `--workers` processes). Fused maps peak
higher than single layers, so each row's confidence thresholds sit where the configured ones sit
around the configured background threshold, but around that row's best seed threshold. Prints a
Markdown table and writes bench/out/grid.json and bench/out/grid.md.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.cam import fuse_layers, normalise_max  # noqa: E402
from pipeline.cam.seeds import cam_head, layer_batch  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data import open_split  # noqa: E402
from pipeline.data.transforms import image_batches, normalised_batch  # noqa: E402
from pipeline.metrics import PseudoTally, sweep_confusions, swept_best, thresholds  # noqa: E402
from pipeline.models.checkpoints import load_classifier  # noqa: E402
from pipeline.preflight import model_settings  # noqa: E402
from pipeline.refine.calibration import run_choices  # noqa: E402
from pipeline.refine.masks import pseudo_mask  # noqa: E402
from pipeline.runs import git_commit  # noqa: E402
from pipeline.stages import output_path, run_outputs  # noqa: E402
from pipeline.workers import worker_pool  # noqa: E402
from bench_out import save  # noqa: E402

def seeds(model, cfg, voc, ids, method, layers, head) -> tuple[list[np.ndarray], float]:
    """Normalised fused maps [K_i, H, W] per image, and the seconds they took."""
    began, maps = time.perf_counter(), []
    for batch_ids, images in image_batches(voc, ids, cfg.cam.batch_size):
        label_sets = [voc.labels(i) for i in batch_ids]
        batch = normalised_batch(images)
        layer_maps = layer_batch(model, batch, label_sets, cfg.cam, head, layers, method)
        fused = normalise_max(fuse_layers(layer_maps, tuple(batch.shape[-2:]), cfg.cam.fuse)).numpy()
        maps += [fused[row, :len(labels)] for row, labels in enumerate(label_sets)]
    return maps, time.perf_counter() - began


def pseudo_row(cfg, pool, voc, ids, maps, crf: bool, seed_threshold: float) -> tuple[dict, float]:
    shift = seed_threshold - cfg.eval.bg_threshold
    settings = replace(cfg.pseudo, crf=crf, fg_threshold_high=min(1.0, cfg.pseudo.fg_threshold_high + shift),
                       fg_threshold_low=max(0.0, cfg.pseudo.fg_threshold_low + shift))
    jobs = [(settings, voc.image(i), m, voc.labels(i)) for i, m in zip(ids, maps)]
    began = time.perf_counter()
    masks = list(pool.map(pseudo_mask, jobs))
    seconds = time.perf_counter() - began
    tally = PseudoTally(voc.num_classes + 1)
    for image_id, mask in zip(ids, masks):
        tally.add(voc.working_mask(image_id), mask)
    return tally.scores(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--run", default="runs/default", help="a run with a trained classifier")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--workers", type=int, default=0, help="CRF processes (0: one per core)")
    args = parser.parse_args()
    cfg = run_choices(model_settings(load_config(args.config, [f"run_dir={args.run}"])), run_outputs(args.run))
    model, _ = load_classifier(output_path(args.run, "train-cls", "model"))
    voc = open_split(cfg.data, cfg.eval.split)
    ids = voc.ids[:args.images]
    grid, n = thresholds(cfg.eval), voc.num_classes + 1
    rows = []
    with worker_pool(args.workers) as pool:
        for method in cfg.eval.compare_methods:
            for layers in cfg.eval.compare_layer_sets:
                head = cam_head(model, cfg, layers) if method == "cam" else cfg.cam.head
                maps, cam_seconds = seeds(model, cfg, voc, ids, method, layers, head)
                sweep = sum(sweep_confusions(voc.working_mask(i), m, voc.labels(i), grid, n) for i, m in zip(ids, maps))
                seed_miou, seed_threshold = swept_best(sweep, grid)
                for crf in (False, True):
                    scores, crf_seconds = pseudo_row(cfg, pool, voc, ids, maps, crf, seed_threshold)
                    rows.append({"method": method, "layers": "+".join(layers), "crf": crf,
                                 "seed_miou": seed_miou, "threshold": seed_threshold,
                                 **{f"pseudo_{k}": v for k, v in scores.items()},
                                 "seconds_per_image": round((cam_seconds + crf_seconds) / len(ids), 4)})
                    print(rows[-1], flush=True)
    table = ["| method | layers | CRF | seed mIoU @ threshold | pseudo mIoU | precision | coverage | s/image |",
             "|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['method']} | {r['layers']} | {'on' if r['crf'] else 'off'} | {r['seed_miou']:.3f} @ "
              f"{r['threshold']:.2f} | {r['pseudo_miou']:.3f} | {r['pseudo_precision']:.3f} | "
              f"{r['pseudo_coverage']:.3f} | {r['seconds_per_image']:.4f} |" for r in rows]
    header = (f"First {len(ids)} images of split `{cfg.eval.split}`, run `{args.run}`, scales "
              f"{list(cfg.cam.scales)}, flip {cfg.cam.flip}, {cfg.cam.fuse} fusion, confidence thresholds "
              f"at the row's seed threshold {cfg.pseudo.fg_threshold_high - cfg.eval.bg_threshold:+.2f} / "
              f"{cfg.pseudo.fg_threshold_low - cfg.eval.bg_threshold:+.2f}, {pool.count} CRF workers, "
              f"{torch.get_num_threads()} torch threads, commit {git_commit()}.")
    print(header + "\n\n" + "\n".join(table))
    save("grid.json", {"header": header, "rows": rows})
    save("grid.md", header + "\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
