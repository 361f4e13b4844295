"""Test-time augmentation of CAMs: several input scales and a horizontal flip, summed (IRN, PSA).

Raw maps of every augmentation are flipped back, resized to the layer's resolution at scale 1.0
and summed before any normalisation, as IRN does; fusion across layers comes after.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.cam.engine import compute_cams


def scaled(images: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return images
    height, width = images.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def augmented_cams(model: nn.Module, images: torch.Tensor, layers: list[str], method: str,
                   classes: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
                   head: str | Mapping[str, nn.Module] = "fc") -> dict[str, torch.Tensor]:
    """Raw maps {layer: [N, K, h, w]} summed over `scales` (and their mirror images when `flip`).

    `h, w` are each layer's size at scale 1.0, which `scales` must therefore include. A flipped
    copy rides in the same batch as the original, so flip costs no extra pass.
    """
    if 1.0 not in scales:
        raise ValueError(f"scales {list(scales)} must include 1.0: maps are summed at its resolution")
    n = images.shape[0]
    summed: dict[str, torch.Tensor] = {}
    for scale in sorted(scales, key=lambda s: s != 1.0):  # 1.0 first: it fixes each layer's size
        batch = scaled(images, scale)
        batch_classes = classes
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
            batch_classes = torch.cat([classes, classes])
        maps = compute_cams(model, batch, layers, method, batch_classes, head=head)
        for name, layer_maps in maps.items():
            if flip:
                layer_maps = layer_maps[:n] + layer_maps[n:].flip(-1)
            if name in summed:
                size = summed[name].shape[-2:]
                summed[name] += F.interpolate(layer_maps, size=size, mode="bilinear", align_corners=False)
            else:
                summed[name] = layer_maps
    return summed
