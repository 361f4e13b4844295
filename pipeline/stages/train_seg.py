"""Stage `train-seg`: the segmenter on pseudo-masks (`seg.labels=pseudo`: the pseudo stage's,
`affinity`: the random walk's, `round2`: the second round's) or, for the fully supervised upper
bound, on ground-truth masks (`seg.labels=gt`) with the same budget and seed."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline import distributed
from pipeline.config import Config, to_dict
from pipeline.data import open_split
from pipeline.data.images import read_mask
from pipeline.data.transforms import SegmentationSet, crop_size, train_transform
from pipeline.models.checkpoints import segmenter_folder
from pipeline.models.frozen import DecoderOnly, EncodedSet
from pipeline.models.seg_training import check_targets, class_weights, segmentation_loss
from pipeline.models.segmenter import build_segmenter, load_encoder
from pipeline.refine.masks import mask_path
from pipeline.train import TrainSpec, fit, pretrained_groups, save_checkpoint, seed_everything

log = logging.getLogger("pipeline")

KIND = "training"
# The stage whose masks each `seg.labels` but "gt" trains on (its folder has the same name).
PSEUDO_MASKS = {"pseudo": "pseudo", "affinity": "pseudo-aff", "round2": "pseudo-r2"}


def OUTPUT(cfg: Config) -> str:
    return segmenter_folder(cfg)


def UPSTREAM(cfg: Config) -> list[str]:
    upstream = [PSEUDO_MASKS.get(cfg.seg.labels, "data")]
    if cfg.seg.encoder_weights == "classifier":
        upstream.append("train-cls")
    return upstream


def SECTION(cfg: Config) -> dict:
    return {"seg": {k: v for k, v in to_dict(cfg.seg).items() if k != "val_split"}, "seed": cfg.seed}


def run(cfg: Config, out: Path, run_dir: Path) -> dict:
    voc = open_split(cfg.data, cfg.seg.split)
    if cfg.seg.labels == "gt":
        read_target, target_path = voc.mask, voc.mask_path
    else:
        target_path = lambda image_id: mask_path(run_dir / PSEUDO_MASKS[cfg.seg.labels], image_id)
        read_target = lambda image_id: read_mask(target_path(image_id))
    pixel_counts = check_targets(voc, read_target, target_path)
    seed_everything(cfg.seed)  # the initial weights too
    model = build_segmenter(cfg.seg.arch, cfg.seg.encoder, voc.num_classes + 1,
                            list(cfg.seg.decoder_channels))
    if cfg.seg.encoder_weights == "classifier":
        load_encoder(model, run_dir / "classifier" / "model.pt")
    elif cfg.seg.encoder_weights != "none":
        load_encoder(model, cfg.seg.encoder_weights)
    groups = pretrained_groups(model, cfg.seg.lr, cfg.seg.encoder_lr_scale, lambda name: name.startswith("encoder."))
    if cfg.seg.cache_features:
        dataset = EncodedSet(model.encoder, voc, read_target, distributed.device(cfg.device))
        trained = DecoderOnly(model)
        log.info("train-seg: frozen encoder's features cached once (%.0f MiB)", dataset.nbytes() / 2 ** 20)
    else:
        dataset, trained = SegmentationSet(voc, read_target, train_transform(crop_size(voc, cfg.seg.crop_size))), model
    spec = TrainSpec(cfg.seg.epochs, cfg.seg.batch_size, cfg.seg.lr, cfg.seg.weight_decay,
                     cfg.seg.max_minutes, cfg.seg.workers, cfg.seed, samples=cfg.seg.samples)
    config = to_dict(cfg)
    weights = class_weights(pixel_counts, cfg.seg.class_balance)
    history = fit(trained, dataset, segmentation_loss(weights), spec, out / "last.pt", config,
                  f"train-seg ({cfg.seg.labels})", groups)
    save_checkpoint(out / "model.pt", {"model": model.state_dict(), "arch": cfg.seg.arch,
                                       "encoder": cfg.seg.encoder, "labels": cfg.seg.labels,
                                       "decoder_channels": list(cfg.seg.decoder_channels),
                                       "class_names": voc.class_names, "config": config})
    (out / "last.pt").unlink(missing_ok=True)
    return {**history, "class_weights": None if weights is None else np.round(weights.numpy(), 4).tolist()}
