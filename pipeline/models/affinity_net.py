"""The affinity network of a run: IRN's class-boundary head (`refine.boundary.BoundaryHead`) on
the frozen classifier's multi-level features, its training loss on pixel pairs of pseudo-masks,
and its boundary maps of new images.

The backbone is the classifier's, read as segmentation-models-pytorch's encoder of the same
architecture (the segmenter's encoder, `seg.encoder_weights: classifier`, is the same network):
its levels are the input and the outputs at strides 2, 4, 8, 16 and 32, and `models.frozen`
caches them once per image for both this head and the segmenter's decoder.
"""
from __future__ import annotations

import math
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config import AffinityConfig
from pipeline.models.small_maps import use_small_map_convs
from pipeline.models.segmenter import encoder_name, load_encoder_weights
from pipeline.refine.affinity import affinity_loss, boundary_affinity, pair_labels
from pipeline.refine.boundary import BoundaryHead
from pipeline.train import load_checkpoint

STRIDES = (2, 4, 8)  # the finest level the head may read; deeper ones are always read too


def classifier_encoder(arch: str, checkpoint: Path) -> nn.Module:
    """smp's encoder of the classifier's `arch` with the trained classifier's weights (its head
    left out), frozen, in eval mode."""
    name = encoder_name(arch)
    encoder = smp.encoders.get_encoder(name, in_channels=3, depth=5, weights=None)
    load_encoder_weights(encoder, name, checkpoint, "affinity (the classifier's weights)")
    return use_small_map_convs(encoder).eval().requires_grad_(False)


def first_level(stride: int) -> int:
    """The index, among the encoder's features, of the level at `stride`."""
    if stride not in STRIDES:
        raise ValueError(f"affinity.stride must be one of {', '.join(map(str, STRIDES))}, not {stride}")
    return int(math.log2(stride))


class AffinityNet(nn.Module):
    """Boundary logits [N, h, w] at `stride` from the encoder's features (the list it returns)."""

    def __init__(self, encoder_channels: list[int], stride: int, width: int):
        super().__init__()
        self.first = first_level(stride)
        self.head = BoundaryHead(list(encoder_channels[self.first:]), width)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head.logits(list(features[self.first:]))


def at_size(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label maps [N, H, W] subsampled by nearest neighbour to `size` (IRN resizes its labels so)."""
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()


def boundary_loss(radius: int):
    """The training loss of boundary logits against pseudo-masks [N, H, W] (255 ignored): IRN's
    affinity loss on the pixel pairs within `radius` at the logits' stride."""
    def loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        pairs = pair_labels(at_size(masks, tuple(logits.shape[-2:])), radius)
        return affinity_loss(boundary_affinity(torch.sigmoid(logits), radius), pairs)
    return loss


@torch.inference_mode()
def boundary_maps(encoder: nn.Module, net: AffinityNet, batch: torch.Tensor, flip: bool) -> torch.Tensor:
    """Boundary maps [N, h, w] in (0, 1) of a normalised batch, computed on the encoder's device and
    returned on the CPU; with `flip`, the logits averaged with the mirrored images' (mirrored
    back), as IRN infers."""
    batch = batch.to(next(encoder.parameters()).device)
    logits = net(encoder(batch))
    if flip:
        logits = (logits + net(encoder(batch.flip(-1))).flip(-1)) / 2
    return torch.sigmoid(logits).cpu()


def build_affinity_net(encoder: nn.Module, settings: AffinityConfig) -> AffinityNet:
    return AffinityNet(list(encoder.out_channels), settings.stride, settings.width)


class Backbone(nn.Module):
    """The frozen encoder, then the affinity net, for training on images (no feature cache)."""

    def __init__(self, encoder: nn.Module, net: AffinityNet):
        super().__init__()
        self.encoder, self.net = encoder, net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.encoder(images)
        return self.net(features)


def load_affinity_net(path: Path, encoder: nn.Module) -> AffinityNet:
    """The trained affinity net of checkpoint `path` (train-aff's model), in eval mode."""
    state = load_checkpoint(path)
    net = AffinityNet(list(encoder.out_channels), state["stride"], state["width"])
    net.load_state_dict(state["model"])
    return net.eval()
