"""Stage `train-seg`: the segmenter on the pseudo-masks `seg.labels` names (`pseudo`: the pseudo
stage's, `affinity`: the random walk's). Its variants train the same segmenter on other masks:
`train-seg-r2` on the second round's (pseudo-r2), `train-seg-gt` on the dataset's ground truth (the
fully supervised upper bound, with the same budget and seed)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline import distributed
from pipeline.config import Config, to_dict
from pipeline.data import open_split
from pipeline.data.transforms import SegmentationSet, crop_size, train_transform
from pipeline.models.checkpoints import load_segmenter
from pipeline.models.frozen import DecoderOnly, EncodedSet
from pipeline.models.seg_training import check_targets, class_weights, segmentation_loss
from pipeline.models.segmenter import build_segmenter, load_encoder
from pipeline.refine.masks import mask_path
from pipeline.train import TrainSpec, fit, pretrained_groups, save_checkpoint, seed_everything

log = logging.getLogger("pipeline")

KIND = "training"
FOLDER = "segmenter"
OUTPUTS = {"model": "model.pt"}
# Training alone: the evaluation keys (seg.val_split, eval_flip, eval_crf) belong to eval-seg,
# and seg.labels chooses the inputs, whose hashes this stage's covers.
KEYS = ("seg.split", "seg.arch", "seg.encoder", "seg.encoder_weights", "seg.decoder_channels",
        "seg.encoder_lr_scale", "seg.crop_size", "seg.samples", "seg.epochs", "seg.batch_size", "seg.lr",
        "seg.weight_decay", "seg.class_balance", "seg.max_minutes", "seg.workers", "seg.cache_features", "seed")
# The stage whose masks each `seg.labels` names.
LABELS = {"pseudo": "pseudo", "affinity": "pseudo-aff"}


def encoder_input(cfg: Config) -> dict:
    """The classifier, where the encoder starts from its weights."""
    return {"classifier": ("train-cls", "model")} if cfg.seg.encoder_weights == "classifier" else {}


def INPUTS(cfg: Config) -> dict:
    return {"masks": (LABELS[cfg.seg.labels], "masks"), **encoder_input(cfg)}


def round_two_inputs(cfg: Config) -> dict:
    """The second round's masks, and the first segmenter where the second starts from it."""
    start = ({"segmenter": ("train-seg", "model")} if cfg.round2.start_from == "segmenter"
             else encoder_input(cfg))
    return {"masks": ("pseudo-r2", "masks"), **start}


def run_round_two(cfg: Config, out: Path, inputs: dict) -> dict:
    """train-seg-r2: the first segmenter's settings, on round2's schedule where it sets one."""
    return run(cfg, out, inputs, samples=cfg.round2.samples)


# `train-seg-r2` on the second round's masks; `train-seg-gt`, without masks to read, on the
# dataset's ground truth (its data stage's record).
VARIANTS = {"r2": {"FOLDER": "segmenter-r2", "SWITCH": "round2.enabled", "INPUTS": round_two_inputs,
                   "KEYS": (*KEYS, "round2.start_from", "round2.samples"), "run": run_round_two},
            "gt": {"FOLDER": "segmenter-gt", "GROUND_TRUTH": True,
                   "INPUTS": lambda cfg: {"dataset": ("data", "manifest"), **encoder_input(cfg)}}}


def starting_model(cfg: Config, num_classes: int, inputs: dict):
    """The segmenter before training: the first segmenter where `inputs` name it (round 2), else a
    new one whose encoder starts from seg.encoder_weights."""
    if "segmenter" in inputs:
        return load_segmenter(inputs["segmenter"], cfg)[0]
    model = build_segmenter(cfg.seg.arch, cfg.seg.encoder, num_classes + 1, list(cfg.seg.decoder_channels))
    if cfg.seg.encoder_weights == "classifier":
        load_encoder(model, inputs["classifier"])
    elif cfg.seg.encoder_weights != "none":
        load_encoder(model, cfg.seg.encoder_weights)
    return model


def run(cfg: Config, out: Path, inputs: dict, samples: int = 0) -> dict:
    """Train on `inputs`' masks for `samples` images, 0 for the seg section's schedule; the
    checkpoint records the run's config as it is."""
    voc = open_split(cfg.data, cfg.seg.split)
    masks = inputs.get("masks")
    if masks is None:
        read_target, target_path = voc.working_mask, voc.mask_path
    else:
        target_path = lambda image_id: mask_path(masks, image_id)
        read_target = lambda image_id: voc.read_working_mask(target_path(image_id), image_id)
    pixel_counts = check_targets(voc, read_target, target_path)
    seed_everything(cfg.seed)  # the initial weights too
    model = starting_model(cfg, voc.num_classes, inputs)
    groups = pretrained_groups(model, cfg.seg.lr, cfg.seg.encoder_lr_scale, lambda name: name.startswith("encoder."))
    if cfg.seg.cache_features:
        dataset = EncodedSet(model.encoder, voc, read_target, distributed.device(cfg.device))
        trained = DecoderOnly(model)
        log.info("train-seg: frozen encoder's features cached once (%.0f MiB)", dataset.nbytes() / 2 ** 20)
    else:
        dataset, trained = SegmentationSet(voc, read_target, train_transform(crop_size(voc, cfg.seg.crop_size))), model
    spec = TrainSpec(cfg.seg.epochs, cfg.seg.batch_size, cfg.seg.lr, cfg.seg.weight_decay,
                     cfg.seg.max_minutes, cfg.seg.workers, cfg.seed, samples=samples or cfg.seg.samples)
    config = to_dict(cfg)
    weights = class_weights(pixel_counts, cfg.seg.class_balance)
    history = fit(trained, dataset, segmentation_loss(weights), spec, out / "last.pt", config,
                  f"train-seg on {masks.name if masks else 'ground truth'}", groups)
    save_checkpoint(out / OUTPUTS["model"], {"model": model.state_dict(), "arch": cfg.seg.arch,
                                             "encoder": cfg.seg.encoder,
                                             "decoder_channels": list(cfg.seg.decoder_channels),
                                             "class_names": voc.class_names, "config": config})
    (out / "last.pt").unlink(missing_ok=True)
    return {**history, "class_weights": None if weights is None else np.round(weights.numpy(), 4).tolist()}
