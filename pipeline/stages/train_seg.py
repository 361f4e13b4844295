"""Stage `train-seg`: the segmenter on pseudo-masks (`seg.labels=pseudo`) or, for the fully
supervised upper bound, on ground-truth masks (`seg.labels=gt`) with the same budget and seed."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from pipeline.config import Config, to_dict
from pipeline.data import open_split
from pipeline.data.images import IGNORE, BadImages, DataError, check_fits, read_mask
from pipeline.data.transforms import SegmentationSet, crop_size, train_transform
from pipeline.data.split import Split
from pipeline.models.frozen import DecoderOnly, EncodedSet
from pipeline.models.segmenter import build_segmenter, load_encoder
from pipeline.stages.pseudo import mask_path
from pipeline.stages.train_cls import read_checkpoint
from pipeline.train import TrainSpec, fit, save_checkpoint, seed_everything

log = logging.getLogger("pipeline")


def OUTPUT(cfg: Config) -> str:
    return "segmenter" if cfg.seg.labels == "pseudo" else "segmenter-gt"


def UPSTREAM(cfg: Config) -> list[str]:
    upstream = ["pseudo"] if cfg.seg.labels == "pseudo" else ["data"]
    if cfg.seg.encoder_weights == "classifier":
        upstream.append("train-cls")
    return upstream


def SECTION(cfg: Config) -> dict:
    return {"seg": {k: v for k, v in to_dict(cfg.seg).items() if k != "val_split"}, "seed": cfg.seed}


def load_segmenter(folder: Path, cfg: Config | None = None) -> tuple[torch.nn.Module, dict]:
    """The trained segmenter in `folder`, in eval mode, and its checkpoint's metadata. Given the
    run's `cfg`, a checkpoint trained for other classes or another architecture is refused."""
    expected = {} if cfg is None else {
        "class_names": open_split(cfg.data, cfg.seg.val_split).class_names, "arch": cfg.seg.arch,
        "encoder": cfg.seg.encoder, "decoder_channels": list(cfg.seg.decoder_channels)}
    state = read_checkpoint(Path(folder) / "model.pt", expected)
    model = build_segmenter(state["arch"], state["encoder"], len(state["class_names"]) + 1,
                            state["decoder_channels"])
    model.load_state_dict(state["model"])
    return model.eval(), state


def class_weights(pixel_counts: np.ndarray, power: float) -> torch.Tensor | None:
    """Median-frequency balancing (Eigen & Fergus 2015, as SegNet trains) raised to `power`, so a
    class the targets rarely show is not drowned by background: weight = (median f / f_c)^power
    over the classes present; None (plain cross-entropy) at power 0."""
    if power == 0:
        return None
    frequency = pixel_counts / pixel_counts.sum()
    present = frequency > 0
    weights = np.zeros(len(frequency))
    weights[present] = (np.median(frequency[present]) / frequency[present]) ** power
    return torch.tensor(weights, dtype=torch.float32)


def segmentation_loss(weights: torch.Tensor | None):
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if weights is None else weights.to(logits.device)
        return F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
    return loss


def param_groups(model: torch.nn.Module, lr: float, encoder_scale: float) -> list[dict]:
    """Optimizer groups: the encoder at `encoder_scale` x lr (frozen, statistics too, at 0)."""
    decoder = [p for name, p in model.named_parameters() if not name.startswith("encoder.")]
    if encoder_scale == 0:
        model.encoder.requires_grad_(False)
        return [{"params": decoder}]
    return [{"params": list(model.encoder.parameters()), "lr": lr * encoder_scale},
            {"params": decoder}]


def check_targets(voc: Split, read_target, target_path) -> np.ndarray:
    """Refuse to start on a training mask that is unreadable, out of range or not its image's
    size, naming every bad one; else each label's pixel count over the split (255 not counted).
    Reads mask pixels but only the images' headers."""
    labels = voc.num_classes + 1
    counts = np.zeros(labels, np.int64)
    bad = BadImages(f"{voc.root}: split '{voc.split}' has invalid training masks; nothing trained")
    for image_id in voc.ids:
        with bad.skip():
            mask = check_fits(target_path(image_id), read_target(image_id), voc.image_shape(image_id))
            known = mask[mask != IGNORE]
            if known.size and known.max() >= labels:
                raise DataError(f"{target_path(image_id)}: label id {known.max()} out of range "
                                f"(0-{labels - 1} or {IGNORE})")
            counts += np.bincount(known, minlength=labels)
    bad.raise_if_any()
    return counts


def run(cfg: Config, out: Path, run_dir: Path) -> dict:
    voc = open_split(cfg.data, cfg.seg.split)
    if cfg.seg.labels == "gt":
        read_target, target_path = voc.mask, voc.mask_path
    else:
        target_path = lambda image_id: mask_path(run_dir / "pseudo", image_id)
        read_target = lambda image_id: read_mask(target_path(image_id))
    pixel_counts = check_targets(voc, read_target, target_path)
    seed_everything(cfg.seed)  # the initial weights too
    model = build_segmenter(cfg.seg.arch, cfg.seg.encoder, voc.num_classes + 1,
                            list(cfg.seg.decoder_channels))
    if cfg.seg.encoder_weights == "classifier":
        load_encoder(model, run_dir / "classifier" / "model.pt")
    elif cfg.seg.encoder_weights != "none":
        load_encoder(model, cfg.seg.encoder_weights)
    groups = param_groups(model, cfg.seg.lr, cfg.seg.encoder_lr_scale)
    if cfg.seg.cache_features:
        dataset, trained = EncodedSet(model.encoder, voc, read_target), DecoderOnly(model)
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
