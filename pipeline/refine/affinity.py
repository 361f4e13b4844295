"""Inter-pixel affinity: pixel pairs within a radius, their labels, affinities and the loss that
trains a boundary (or feature) head on them.

AffinityNet (PSA, Ahn & Kwak 2018) and IRN (Ahn et al. 2019) relate each pixel of a map at the
feature stride to the pixels within a radius. A pair is written once, from the pixel i at (y, x)
to its partner j at (y + dy, x + dx), for the offsets of one half-plane (`pair_offsets`), so
that every per-pair array here is [..., P, h, w] with P the number of offsets. A pair whose
partner falls outside the map is ignored (IRN pads the boundary map with 1, PSA crops it).
A label map at the feature stride is the pseudo-mask subsampled by nearest neighbour, e.g.
`mask[::4, ::4]` (IRN resizes by 1/4 with nearest-neighbour interpolation).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from pipeline.refine.pseudo import IGNORE

# The pair labels (IRN's bg_pos / fg_pos / neg affinity labels, PSA's the same three)
SAME_BACKGROUND, SAME_FOREGROUND, DIFFERENT = 0, 1, 2
IGNORED = IGNORE


def pair_offsets(radius: int = 5) -> list[tuple[int, int]]:
    """The (dy, dx) with 0 < dy^2 + dx^2 < radius^2 in the half-plane dy > 0 or (dy = 0, dx > 0).

    IRN's and PSA's neighbourhood: radius 5 (34 offsets) at inference, 10 when IRN trains.
    The other half-plane holds the same unordered pairs, seen from the partner.
    """
    reach = radius - 1
    return [(dy, dx) for dy in range(reach + 1) for dx in range(-reach, reach + 1)
            if (dy > 0 or dx > 0) and dy * dy + dx * dx < radius * radius]


def pair_path(dy: int, dx: int) -> list[tuple[int, int]]:
    """The pixels between a pixel and its partner at (dy, dx), both included: IRN's rule (its
    `PathIndex`), every pixel of the bounding box whose centre lies within distance 1 of the line
    through the two centres. A diagonal step thus passes by both corner pixels beside it."""
    length_sq = dy * dy + dx * dx
    return [(y, x) for y in range(min(0, dy), max(0, dy) + 1) for x in range(min(0, dx), max(0, dx) + 1)
            if (dy * x - dx * y) ** 2 < length_sq]


def partner_view(values: torch.Tensor, radius: int, fill: float):
    """A function (dy, dx) -> `values` [..., h, w] as seen from each pixel's partner at (dy, dx)
    (out[..., y, x] = values[..., y + dy, x + dx], `fill` outside the map) for |dy|, |dx| below
    `radius`: slices of one padded tensor, no copies."""
    reach = radius - 1
    height, width = values.shape[-2:]
    padded = F.pad(values, (reach, reach, reach, reach), value=fill)
    return lambda dy, dx: padded[..., reach + dy:reach + dy + height, reach + dx:reach + dx + width]


def partner_inside(height: int, width: int, radius: int = 5) -> torch.Tensor:
    """bool [P, h, w]: whether each pixel's partner at each offset lies inside the map."""
    inside = partner_view(torch.ones(height, width, dtype=torch.bool), radius, False)
    return torch.stack([inside(dy, dx) for dy, dx in pair_offsets(radius)])


def pair_labels(labels: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """uint8 [..., P, h, w] pair labels of a label map [..., h, w] (0 background, 1..C classes,
    255 ignore): SAME_BACKGROUND, SAME_FOREGROUND, DIFFERENT, or IGNORED where either pixel is
    255 or the partner is outside the map (IRN's `GetAffinityLabelFromIndices`)."""
    labels = labels.long()
    partner = partner_view(labels, radius, IGNORE)
    pairs = []
    for dy, dx in pair_offsets(radius):
        other = partner(dy, dx)
        code = torch.full_like(labels, IGNORED)
        known = (labels != IGNORE) & (other != IGNORE)
        code[known & (labels != other)] = DIFFERENT
        code[known & (labels == other) & (labels == 0)] = SAME_BACKGROUND
        code[known & (labels == other) & (labels > 0)] = SAME_FOREGROUND
        pairs.append(code)
    return torch.stack(pairs, -3).to(torch.uint8)


def boundary_affinity(boundary: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """[..., P, h, w] affinities from a class-boundary map [..., h, w] in [0, 1] (IRN's
    `edge_to_affinity`): a_ij = 1 - the boundary's max over `pair_path` from i to j, 0 where j
    is outside the map. Differentiable: IRN trains its boundary head through it."""
    partner = partner_view(boundary, radius, 1.0)
    walls = [torch.stack([partner(y, x) for y, x in pair_path(dy, dx)]).amax(0)
             for dy, dx in pair_offsets(radius)]
    return 1.0 - torch.stack(walls, -3)


def feature_affinity(features: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """[..., P, h, w] affinities from features [..., C, h, w] (PSA's AffinityNet): the paper writes
    exp(-||f_i - f_j||_1), its code (`network/resnet38_aff.py`) and IRN's `feature_to_affinity`
    take the mean over channels instead of the sum, as here; 0 where j is outside the map."""
    partner = partner_view(features, radius, 0.0)
    inside = partner_inside(*features.shape[-2:], radius)
    affinity = torch.stack([torch.exp(-(features - partner(dy, dx)).abs().mean(-3))
                            for dy, dx in pair_offsets(radius)], -3)
    return affinity * inside


def affinity_loss(affinity: torch.Tensor, pairs: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """IRN's affinity loss (`step/train_irn.py`; PSA's `train_aff.py` weighs its terms the same):
    -log(a) over same-class pairs, averaged over background pairs and over foreground pairs
    separately and the two halved, plus -log(1 - a) averaged over different-class pairs; the
    positive and negative terms weigh one half each. `eps` 1e-5 as IRN keeps the logs finite."""
    def mean_over(loss: torch.Tensor, code: int) -> torch.Tensor:
        chosen = (pairs == code).to(loss.dtype)
        return (loss * chosen).sum() / (chosen.sum() + eps)

    same = -torch.log(affinity + eps)
    positive = mean_over(same, SAME_BACKGROUND) / 2 + mean_over(same, SAME_FOREGROUND) / 2
    negative = mean_over(-torch.log(1.0 + eps - affinity), DIFFERENT)
    return (positive + negative) / 2
