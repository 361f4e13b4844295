"""Stage `train-cls`: the multi-label classifier on image-level labels (BCE with logits)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from pipeline import distributed
from pipeline.config import Config, to_dict
from pipeline.data import open_split
from pipeline.data.images import DataError
from pipeline.data.transforms import ClassificationSet, crop_size, train_transform
from pipeline.models.checkpoints import predict_scores
from pipeline.models.classifier import build_classifier, head_name
from pipeline.train import TrainSpec, fit, mean_average_precision, pretrained_groups, save_checkpoint, seed_everything

KIND = "training"
FOLDER = "classifier"
OUTPUTS = {"model": "model.pt"}
INPUTS = {"dataset": ("data", "manifest")}  # the dataset the data stage built or checked
KEYS = ("cls", "seed")

# From-scratch ResNets sit at the label prior for a while; a long warm-up (as OneCycle) got past it fastest.
WARMUP = 0.15


def single_label_loss(logits: torch.Tensor, multi_hot: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy for images with exactly one label (the pretraining items)."""
    return F.cross_entropy(logits, multi_hot.argmax(1))


def pretrain(cfg: Config, model: torch.nn.Module, out: Path, config: dict) -> dict:
    """Train on single-item images first: cheap, small, and the items' shapes are learnt in isolation."""
    items = open_split(cfg.data, cfg.cls.pretrain_split)
    labels = items.label_matrix()
    if (labels.sum(1) != 1).any():
        raise DataError(f"{items.root}: split '{items.split}' must have exactly one label per image "
                        f"for pretraining")
    spec = TrainSpec(cfg.cls.pretrain_epochs, cfg.cls.pretrain_batch_size, cfg.cls.lr,
                     cfg.cls.weight_decay, cfg.cls.max_minutes, cfg.cls.workers, cfg.seed, WARMUP,
                     cfg.cls.pretrain_samples)
    dataset = ClassificationSet(items, labels, train_transform(crop_size(items, cfg.cls.pretrain_crop_size)))
    return fit(model, dataset, single_label_loss, spec, out / "pretrain.pt", config, "pretrain-cls")


def backbone_groups(model: torch.nn.Module, lr: float, scale: float) -> list[dict]:
    """Everything but the linear head at `scale` x lr (frozen at 0), the head at lr."""
    head = head_name(model) + "."
    return pretrained_groups(model, lr, scale, lambda name: not name.startswith(head))


def run(cfg: Config, out: Path, inputs: dict) -> dict:
    train = open_split(cfg.data, cfg.cls.split)
    labels = train.label_matrix()
    seed_everything(cfg.seed)  # the initial weights too
    model = build_classifier(cfg.cls.arch, train.num_classes, cfg.cls.last_stride, cfg.cls.weights)
    config = to_dict(cfg)
    pretrained = pretrain(cfg, model, out, config) if cfg.cls.pretrain_split else None
    train_size = crop_size(train, cfg.cls.crop_size)
    dataset = ClassificationSet(train, labels, train_transform(train_size))
    spec = TrainSpec(cfg.cls.epochs, cfg.cls.batch_size, cfg.cls.lr, cfg.cls.weight_decay,
                     cfg.cls.max_minutes, cfg.cls.workers, cfg.seed, WARMUP, cfg.cls.samples)
    history = fit(model, dataset, F.binary_cross_entropy_with_logits, spec, out / "last.pt", config,
                  "train-cls", backbone_groups(model, cfg.cls.lr, cfg.cls.backbone_lr_scale))
    model.eval().to(distributed.device(cfg.device))
    val = open_split(cfg.data, cfg.cls.val_split)
    val_map, per_class = mean_average_precision(predict_scores(model, val), val.label_matrix())
    model.to("cpu")  # the checkpoint loads on machines without the device
    save_checkpoint(out / OUTPUTS["model"], {
        "model": model.state_dict(), "arch": cfg.cls.arch, "last_stride": cfg.cls.last_stride,
        "class_names": train.class_names, "train_size": train_size, "config": config})
    for partial in ("pretrain.pt", "last.pt"):
        (out / partial).unlink(missing_ok=True)
    return {**history, "pretrain": pretrained, "val_map": round(val_map, 4),
            "val_ap": dict(zip(train.class_names, [round(x, 4) for x in per_class])),
            "label_prior": [round(float(x), 4) for x in labels.mean(0)]}
