"""The random walk that propagates CAMs along inter-pixel affinities (PSA, IRN), kept sparse.

IRN (`misc/indexing.py`, `step/make_sem_seg_labels.py`) builds the affinity matrix A of all
h*w pixels dense, with 1 on the diagonal, raises it to the power beta, normalises its columns,
squares it exp_times times and multiplies the CAMs by the result: maps @ (A D^-1)^(2^exp_times).
A is symmetric, so that is maps^T <- T maps^T with T = D^-1 A^beta (rows normalised), taken
2^exp_times times. T has at most 2P + 1 entries a row (69 at radius 5), so here it is a sparse
CSR matrix and the walk is 2^exp_times sparse products: never an h*w x h*w dense matrix
(at 125 x 94 that alone would be 550 MB).

Defaults are IRN's semantic-segmentation inference (`run_sample.py`): radius 5 at stride 4,
beta 10, exp_times 8 (256 steps), background threshold 0.25.
"""
from __future__ import annotations

import warnings

import torch
from torch.nn import functional as F

from pipeline.refine.affinity import boundary_affinity, pair_offsets, partner_view


def transition_matrix(affinity: torch.Tensor, radius: int = 5, beta: float = 10.0) -> torch.Tensor:
    """Sparse CSR [h*w, h*w] T = D^-1 A^beta from affinities [P, h, w] (`pair_offsets(radius)`):
    A holds each pair's affinity at (i, j) and (j, i) and 1 on the diagonal (IRN's
    `affinity_sparse2dense`), D its row sums. Pixels are numbered row by row."""
    offsets = pair_offsets(radius)
    if affinity.dim() != 3 or affinity.shape[0] != len(offsets):
        raise ValueError(f"affinity must be [{len(offsets)}, h, w] for radius {radius}, "
                         f"got {list(affinity.shape)}")
    weights, valid, stencil = _stencil(affinity ** beta, radius)
    height, width = affinity.shape[1:]
    pixels = height * width
    # Row i's entries sit at columns i + dy * w + dx; the stencil is sorted by (dy, dx), so each
    # row's columns come out sorted and the CSR arrays are read straight off [pixels, stencil].
    valid = valid.reshape(len(stencil), pixels).T
    values = (weights / weights.sum(0)).reshape(len(stencil), pixels).T[valid]
    steps = torch.tensor([dy * width + dx for dy, dx in stencil])
    columns = (torch.arange(pixels)[:, None] + steps)[valid]
    rows = torch.cat([torch.zeros(1, dtype=torch.long), valid.sum(1).cumsum(0)])
    with warnings.catch_warnings():
        # torch's CSR is labelled beta; its product with a dense matrix is all we use
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(rows, columns, values, (pixels, pixels), check_invariants=True)


def _stencil(weight: torch.Tensor, radius: int):
    """Each pixel's row of A laid out as [S, h, w] over the S = 2P + 1 offsets of its whole
    neighbourhood sorted by (dy, dx), with whether each neighbour is inside the map [S, h, w]
    and those offsets."""
    offsets = pair_offsets(radius)
    inside = partner_view(torch.ones(weight.shape[1:], dtype=torch.bool), radius, False)
    own = [torch.where(inside(dy, dx), weight[p], 0.0) for p, (dy, dx) in enumerate(offsets)]
    # a pair (i, j) is stored at i; j's row finds it at the opposite offset
    theirs = [partner_view(own[p], radius, 0.0)(-dy, -dx) for p, (dy, dx) in enumerate(offsets)]
    stencil = [(-dy, -dx) for dy, dx in reversed(offsets)] + [(0, 0)] + offsets
    weights = torch.stack(theirs[::-1] + [torch.ones_like(weight[0])] + own)
    return weights, torch.stack([inside(dy, dx) for dy, dx in stencil]), stencil


def random_walk(maps: torch.Tensor, transition: torch.Tensor, steps: int = 2 ** 8) -> torch.Tensor:
    """[C, h, w] maps after `steps` products with `transition` (from `transition_matrix`): each
    step replaces a pixel's value by the T-weighted mean over its neighbourhood."""
    channels, height, width = maps.shape
    values = maps.reshape(channels, height * width).T.contiguous().to(transition.dtype)
    for _ in range(steps):
        values = transition @ values
    return values.T.reshape(channels, height, width)


@torch.no_grad()
def propagate(cams: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0,
              exp_times: int = 8) -> torch.Tensor:
    """CAMs [K, h, w] propagated by IRN's random walk (`propagate_to_edge`) on a class-boundary
    map [h, w] at the same stride: the CAMs are first multiplied by 1 - boundary (IRN's choice,
    so that boundary pixels spread nothing), then walked 2^exp_times steps. Returns [K, h, w] in
    the CAMs' dtype.

    The walk runs in float64: in float32 a row of T sums to 1 only within ~1e-7, and 256 steps
    compound that to a few 1e-5 of the maps' scale (IRN's dense float32 squaring drifts as much).
    """
    if cams.shape[-2:] != boundary.shape:
        raise ValueError(f"cams {list(cams.shape)} and boundary {list(boundary.shape)} differ in size")
    boundary = boundary.double()
    transition = transition_matrix(boundary_affinity(boundary, radius), radius, beta)
    return random_walk(cams.double() * (1.0 - boundary), transition, 2 ** exp_times).to(cams.dtype)


def walk_labels(walked: torch.Tensor, classes: torch.Tensor, size: tuple[int, int], stride: int = 4,
                background: float | None = 0.25) -> torch.Tensor:
    """int64 [H, W] labels (0 background, class index + 1) from walked maps at the feature stride,
    as IRN's `make_sem_seg_labels.py`: bilinear upsampling by `stride` cropped to `size`, division
    by the maximum over all classes and pixels, then argmax against a constant background score
    `background` (IRN's sem_seg_bg_thres 0.25). `background=None`: `walked` [K + 1, h, w] holds
    the background in channel 0 (PSA walks a (1 - max_c M^c)^alpha channel with the classes).
    `classes` [K] are the image's 0-based class indices (a seed file's `classes`)."""
    height, width = size
    upsampled = F.interpolate(walked[None].float(), scale_factor=stride, mode="bilinear",
                              align_corners=False)[0]
    if upsampled.shape[1] < height or upsampled.shape[2] < width:
        raise ValueError(f"maps {list(walked.shape)} at stride {stride} do not cover {height} x {width}")
    scores = upsampled[:, :height, :width]
    scores = scores / scores.max().clamp_min(1e-5)
    if background is not None:
        scores = torch.cat([torch.full_like(scores[:1], background), scores])
    keys = torch.cat([torch.zeros(1, dtype=torch.long), torch.as_tensor(classes).long() + 1])
    if len(keys) != len(scores):
        raise ValueError(f"{len(scores)} score channels for {len(keys)} labels (background + classes)")
    return keys[scores.argmax(0)]
