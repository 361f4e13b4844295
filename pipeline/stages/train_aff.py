"""Stage `train-aff`: IRN's class-boundary head on the frozen classifier's features, trained on
the pixel pairs of the confident pseudo-masks of `affinity.split` (same class, different class;
pairs touching a 255 pixel are ignored)."""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline import distributed
from pipeline.config import Config, to_dict
from pipeline.data import open_split
from pipeline.data.transforms import SegmentationSet, crop_size, train_transform
from pipeline.models.affinity_net import Backbone, boundary_loss, build_affinity_net, classifier_encoder
from pipeline.models.frozen import EncodedSet
from pipeline.refine.masks import mask_path
from pipeline.train import TrainSpec, fit, save_checkpoint, seed_everything

log = logging.getLogger("pipeline")

SWITCH = "affinity.enabled"
KIND = "training"
FOLDER = "affinity"
OUTPUTS = {"model": "model.pt"}
INPUTS = {"masks": ("pseudo", "masks"), "classifier": ("train-cls", "model")}
# the walk's keys (radius, beta, exp_times, flip) belong to pseudo-aff: editing them reruns only it
KEYS = ("affinity.split", "affinity.stride", "affinity.width", "affinity.train_radius", "affinity.samples",
        "affinity.epochs", "affinity.batch_size", "affinity.lr", "affinity.weight_decay",
        "affinity.max_minutes", "affinity.workers", "affinity.crop_size", "affinity.cache_features", "seed")


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    settings = cfg.affinity
    voc = open_split(cfg.data, settings.split)
    read_target = lambda image_id: voc.read_working_mask(mask_path(inputs["masks"], image_id), image_id)
    encoder = classifier_encoder(cfg.cls.arch, inputs["classifier"])
    seed_everything(cfg.seed)  # the head's initial weights too
    net = build_affinity_net(encoder, settings)
    if settings.cache_features:
        dataset, trained = EncodedSet(encoder, voc, read_target, distributed.device(cfg.device)), net
    else:
        transform = train_transform(crop_size(voc, settings.crop_size))
        dataset, trained = SegmentationSet(voc, read_target, transform), Backbone(encoder, net)
    spec = TrainSpec(settings.epochs, settings.batch_size, settings.lr, settings.weight_decay,
                     settings.max_minutes, settings.workers, cfg.seed, samples=settings.samples)
    config = to_dict(cfg)
    history = fit(trained, dataset, boundary_loss(settings.train_radius), spec, out / "last.pt", config,
                  "train-aff")
    save_checkpoint(out / OUTPUTS["model"], {"model": net.state_dict(), "arch": cfg.cls.arch,
                                       "stride": settings.stride, "width": settings.width,
                                       "config": config})
    (out / "last.pt").unlink(missing_ok=True)
    return history
