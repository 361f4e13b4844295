"""A light class-boundary head on a frozen classifier's multi-level features (IRN's edge branch,
`net/resnet50_irn.py`'s fc_edge1..6).

IRN feeds it ResNet-50's stem and layer1..layer4 outputs with their gradients cut (the backbone
stays frozen) and trains it through `boundary_affinity` and `affinity_loss` on the pair labels of
confident pseudo-masks; at inference it averages the logits of the image and of its mirror image
(flipped back) before the sigmoid, which is why `logits` is public.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BoundaryHead(nn.Module):
    """Per level a 1x1 convolution to `width` channels (32 in IRN) with GroupNorm (`groups` 4 as
    IRN) and ReLU, upsampled to the finest level's size; the concatenation goes through a 1x1
    convolution with a bias to one channel. Output: the boundary map [N, h, w] at the finest
    level's stride, in (0, 1)."""

    def __init__(self, in_channels: list[int], width: int = 32, groups: int = 4):
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, width, 1, bias=False), nn.GroupNorm(groups, width))
            for channels in in_channels)
        self.fuse = nn.Conv2d(width * len(in_channels), 1, 1)

    def logits(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[N, h, w] boundary logits from features [N, C_l, h_l, w_l], one per level, in the
        order of `in_channels`; (h, w) is the largest level's size."""
        if len(features) != len(self.levels):
            raise ValueError(f"{len(features)} feature maps for a head of {len(self.levels)} levels")
        size = max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1])
        # IRN upsamples before the ReLU, as here
        maps = [F.relu(F.interpolate(level(f), size=size, mode="bilinear", align_corners=False))
                for level, f in zip(self.levels, features)]
        return self.fuse(torch.cat(maps, 1))[:, 0]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))
