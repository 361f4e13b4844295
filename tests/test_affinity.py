"""Inter-pixel affinity (PSA, IRN): pairs and their labels, affinities from a boundary map and from
features, the affinity loss, the boundary head, and the sparse random walk against IRN's dense one."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.refine.affinity import (DIFFERENT, IGNORED, SAME_BACKGROUND, SAME_FOREGROUND, affinity_loss,
                                      boundary_affinity, feature_affinity, pair_labels, pair_offsets, pair_path)
from pipeline.refine.boundary import BoundaryHead
from pipeline.refine.random_walk import propagate, random_walk, transition_matrix, walk_labels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from dense_walk import dense_propagate  # noqa: E402  (the reference lives beside the benchmark)

B, F, N, X = SAME_BACKGROUND, SAME_FOREGROUND, DIFFERENT, IGNORED


def test_offsets_cover_each_pair_within_the_radius_once():
    offsets = pair_offsets(5)
    assert len(offsets) == 34  # IRN's and PSA's count at radius 5
    assert pair_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    both_halves = set(offsets) | {(-dy, -dx) for dy, dx in offsets}
    disc = {(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if 0 < dy * dy + dx * dx < 25}
    assert both_halves == disc and len(both_halves) == 2 * len(offsets)


def test_paths_take_every_pixel_within_one_of_the_line():
    assert pair_path(0, 2) == [(0, 0), (0, 1), (0, 2)]
    assert pair_path(1, 1) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # both corners beside the diagonal
    assert pair_path(1, -1) == [(0, -1), (0, 0), (1, -1), (1, 0)]
    # (2, -2): (x + y)^2 / 2 < 1, so |x + y| <= 1 in the box y 0..2, x -2..0
    assert pair_path(2, -2) == [(0, -1), (0, 0), (1, -2), (1, -1), (1, 0), (2, -2), (2, -1)]


def test_pair_labels_by_hand():
    labels = torch.tensor([[0, 0, 1],
                           [0, 2, 1],
                           [255, 2, 1]])
    expected = [
        [[B, N, X], [N, N, X], [X, N, X]],  # (0, 1): right
        [[X, B, N], [X, X, N], [X, X, X]],  # (1, -1): down-left
        [[B, N, F], [X, F, F], [X, X, X]],  # (1, 0): down
        [[N, N, X], [N, N, X], [X, X, X]],  # (1, 1): down-right
    ]
    pairs = pair_labels(labels, radius=2)
    assert pairs.dtype == torch.uint8
    assert pairs.tolist() == expected
    batched = pair_labels(torch.stack([labels, labels.T]), radius=2)
    assert batched.shape == (2, 4, 3, 3) and batched[0].tolist() == expected


def wall_map() -> torch.Tensor:
    """4 x 6 boundary map: a wall (1) down column 3, a soft 0.4 at (1, 1), 0 elsewhere."""
    boundary = torch.zeros(4, 6)
    boundary[:, 3] = 1.0
    boundary[1, 1] = 0.4
    return boundary


def affinity_of(affinity, radius, source, target):
    (y, x), (ty, tx) = source, target
    return affinity[pair_offsets(radius).index((ty - y, tx - x)), y, x].item()


def test_boundary_affinity_by_hand():
    affinity = boundary_affinity(wall_map(), radius=3)
    assert affinity.shape == (len(pair_offsets(3)), 4, 6)
    pairs = {((0, 0), (0, 2)): 1.0, ((3, 4), (3, 5)): 1.0,   # within a region
             ((0, 2), (0, 4)): 0.0, ((2, 2), (3, 4)): 0.0,   # across the wall
             ((0, 2), (1, 3)): 0.0,                          # onto the wall
             ((0, 4), (2, 2)): 0.0,                          # (2, -2) passes (0, 3), (1, 3), (2, 3)
             ((1, 0), (1, 2)): 0.6, ((0, 0), (1, 1)): 0.6,   # through and onto the soft pixel
             ((0, 1), (1, 0)): 0.6,                          # (1, -1) passes by the corner (1, 1)
             ((0, 0), (1, 0)): 1.0, ((2, 0), (3, 2)): 1.0}
    for (source, target), value in pairs.items():
        assert affinity_of(affinity, 3, source, target) == pytest.approx(value), (source, target)
    # partners outside the map: affinity 0 (bottom row downwards, right column rightwards)
    assert affinity[pair_offsets(3).index((1, 0)), 3].eq(0).all()
    assert affinity[pair_offsets(3).index((0, 1)), :, 5].eq(0).all()


def test_feature_affinity_is_exp_of_minus_the_mean_absolute_difference():
    features = torch.zeros(2, 2, 3)
    features[:, 0, 1] = torch.tensor([1.0, 3.0])  # differs from its neighbours by mean 2
    affinity = feature_affinity(features, radius=2)
    right = pair_offsets(2).index((0, 1))
    assert affinity[right, 0].tolist() == pytest.approx([math.exp(-2), math.exp(-2), 0.0])
    assert affinity[right, 1].tolist() == pytest.approx([1.0, 1.0, 0.0])


def test_affinity_loss_by_hand():
    labels = torch.tensor([[0, 0, 0, 1, 1]])
    pairs = pair_labels(labels, radius=2)  # rightwards: B, B, N, F, ignored (border)
    affinity = torch.full(pairs.shape, 0.3)
    affinity[0, 0] = torch.tensor([0.5, 0.25, 0.2, 0.8, 0.0])
    affinity.requires_grad_(True)
    loss = affinity_loss(affinity, pairs)
    background = (math.log(2) + math.log(4)) / 2  # two background pairs, averaged
    foreground = math.log(1.25)
    negative = -math.log(1 - 0.2)
    assert loss.item() == pytest.approx((background / 2 + foreground / 2 + negative) / 2, rel=1e-4)
    loss.backward()
    ignored = pairs == IGNORED
    assert affinity.grad[ignored].eq(0).all() and affinity.grad[~ignored].ne(0).all()


def test_boundary_head_shape_range_and_gradients():
    torch.manual_seed(0)
    channels, sizes = [8, 16, 32, 64], [(16, 12), (8, 6), (4, 3), (2, 2)]  # strides 4..32 of 64 x 48
    features = [torch.randn(2, c, *s) for c, s in zip(channels, sizes)]
    head = BoundaryHead(channels)
    boundary = head(features)
    assert boundary.shape == (2, 16, 12)
    assert ((boundary > 0) & (boundary < 1)).all()
    labels = torch.zeros(2, 16, 12, dtype=torch.long)
    labels[:, 4:12, 3:9] = 1
    labels[:, 0, :] = 255
    affinity_loss(boundary_affinity(boundary, radius=3), pair_labels(labels, radius=3)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    with pytest.raises(ValueError, match="3 feature maps for a head of 4 levels"):
        head(features[:3])


def test_transition_matrix_against_pairs_listed_one_by_one():
    torch.manual_seed(1)
    height, width, radius, beta = 5, 4, 3, 2.0
    affinity = torch.rand(len(pair_offsets(radius)), height, width, dtype=torch.float64)
    got = transition_matrix(affinity, radius, beta)
    assert got.layout == torch.sparse_csr
    expected = np.eye(height * width)
    for p, (dy, dx) in enumerate(pair_offsets(radius)):
        for y in range(height):
            for x in range(width):
                if y + dy < height and 0 <= x + dx < width:
                    i, j = y * width + x, (y + dy) * width + x + dx
                    expected[i, j] = expected[j, i] = affinity[p, y, x].item() ** beta
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(got.to_dense().numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"affinity must be \[12, h, w\] for radius 3"):
        transition_matrix(affinity[:5], radius)


@pytest.mark.parametrize("radius", [3, 4, 5])
def test_sparse_walk_equals_irn_dense_walk(radius):
    generator = torch.Generator().manual_seed(radius)
    boundary = torch.rand(12, 10, generator=generator) ** 3  # mostly low, a few high
    cams = torch.rand(3, 12, 10, generator=generator)
    ours = propagate(cams, boundary, radius=radius)
    assert ours.shape == cams.shape and ours.dtype == torch.float32
    exact = dense_propagate(cams.double(), boundary.double(), radius=radius)
    torch.testing.assert_close(ours.double(), exact, rtol=0, atol=1e-6)
    # IRN's own precision: its float32 squaring drifts by up to a few 1e-5
    as_irn = dense_propagate(cams, boundary, radius=radius)
    torch.testing.assert_close(ours, as_irn, rtol=0, atol=1e-4)
    classes = torch.tensor([0, 4, 7])
    assert torch.equal(walk_labels(ours, classes, (45, 40)), walk_labels(as_irn, classes, (45, 40)))


def test_a_peak_spreads_within_its_region_and_not_across_a_wall():
    boundary = torch.zeros(16, 16)
    boundary[:, 8] = 1.0
    cams = torch.zeros(1, 16, 16)
    cams[0, 8, 3] = 1.0
    walked = propagate(cams, boundary)
    left, right = walked[0, :, :8], walked[0, :, 9:]
    assert left.min() > 0.5 * left.max() > 0  # spread over its whole region, near uniformly
    assert right.abs().max() == 0 and walked[0, :, 8].abs().max() == 0


def test_walk_with_the_identity_keeps_the_maps():
    maps = torch.rand(2, 3, 4)
    identity = transition_matrix(torch.zeros(len(pair_offsets(2)), 3, 4), radius=2)
    torch.testing.assert_close(random_walk(maps, identity, steps=5), maps)


def test_walk_labels_upsample_normalise_and_threshold_as_irn():
    walked = torch.zeros(2, 2, 2)
    walked[0, 0, 0] = 4.0  # class 3 strong top left
    walked[1, 1, 1] = 2.0  # class 6 at half the global maximum bottom right
    walked[1, 0, 1] = 0.8  # 0.2 after the division: under the background threshold
    labels = walk_labels(walked, torch.tensor([3, 6]), (2, 2), stride=1)
    assert labels.tolist() == [[4, 0], [0, 7]]
    assert walk_labels(walked, torch.tensor([3, 6]), (7, 6), stride=4).shape == (7, 6)
    # PSA's way: channel 0 is a walked background
    psa = torch.stack([torch.full((2, 2), 0.5), walked[0], walked[1]])
    assert walk_labels(psa, torch.tensor([3, 6]), (2, 2), 1, background=None).tolist() == [[4, 7], [0, 7]]
    with pytest.raises(ValueError, match="do not cover"):
        walk_labels(walked, torch.tensor([3, 6]), (9, 8), stride=4)
