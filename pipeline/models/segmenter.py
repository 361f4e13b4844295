"""The segmenter: segmentation-models-pytorch architectures by name; smp downloads no weights."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import segmentation_models_pytorch as smp
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.models.classifier import ARCHS as CLASSIFIER_ARCHS
from pipeline.models.small_maps import use_small_map_convs
from pipeline.models.weights import load_weights

ARCHS = {"unet": smp.Unet, "deeplabv3plus": smp.DeepLabV3Plus, "fpn": smp.FPN, "deeplabv3": smp.DeepLabV3}


def build_segmenter(arch: str, encoder: str, num_classes: int,
                    decoder_channels: list[int] | None = None) -> nn.Module:
    """An smp model with `num_classes` outputs (background included) and random weights; its
    convolutions on tiny maps run as matrix products on the CPU (`models.small_maps`)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown segmenter arch '{arch}' (choose from {', '.join(ARCHS)})")
    extra = {}
    if decoder_channels:
        if arch != "unet":
            raise ValueError("seg.decoder_channels applies to seg.arch=unet only")
        extra["decoder_channels"] = tuple(decoder_channels)
    return use_small_map_convs(ARCHS[arch](encoder_name=encoder, encoder_weights=None, in_channels=3,
                                           classes=num_classes, **extra))


def encoder_name(classifier_arch: str) -> str:
    """smp's name for the encoder of a classifier's architecture: its own for torchvision's
    ResNets, `tu-<name>` for a timm architecture."""
    return classifier_arch if classifier_arch in CLASSIFIER_ARCHS else f"tu-{classifier_arch}"


def load_encoder_weights(encoder: nn.Module, name: str, weights: str | Path, key: str) -> None:
    """Start smp's encoder `name` from `weights`: a local state dict (the backbone's layout; ours
    keep it under `model`), an offline ImageNet name or a torchvision weight name. A timm encoder
    (`tu-<name>`) holds timm's model as `model`, in timm's layout."""
    load_weights(encoder.model if name.startswith("tu-") else encoder, name, weights, key)


def load_encoder(model: nn.Module, weights: str | Path) -> None:
    """Start a segmenter's encoder, which smp records in `config`, from `weights`."""
    load_encoder_weights(model.encoder, model.config["encoder_name"], weights, "seg.encoder_weights")


def _softmax(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax [N, K, H, W]; inputs are padded at the bottom and right to a multiple of 32, as smp
    encoders need."""
    height, width = images.shape[-2:]
    probs = model(F.pad(images, (0, -width % 32, 0, -height % 32))).softmax(1)
    return probs[..., :height, :width]


@torch.inference_mode()
def predict_probs(model: nn.Module, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """Softmax probabilities [N, K, H, W], averaged with the mirrored images' (mirrored back) when
    `flip`: computed on the model's device, returned on the CPU."""
    images = images.to(next(model.parameters()).device)
    probs = _softmax(model, images)
    if flip:
        probs = (probs + _softmax(model, images.flip(-1)).flip(-1)) / 2
    return probs.cpu()
