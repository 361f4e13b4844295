"""The affinity network's loss and the walked seeds that pseudo-aff makes pseudo-masks from."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.config import AffinityConfig
from pipeline.models.affinity_net import AffinityNet, at_size, boundary_loss
from pipeline.refine.masks import walked_cams


def test_boundary_loss_of_an_undecided_head_is_log_2():
    # Logits 0 everywhere: every boundary pixel is 0.5, so every affinity is 1 - 0.5 = 0.5 and
    # each of IRN's three terms is -log(0.5); (bg / 2 + fg / 2 + neg) / 2 = log 2.
    masks = torch.zeros(1, 16, 16, dtype=torch.long)
    masks[0, :, 8:] = 3  # background on the left, a class on the right: all three pair kinds
    masks[0, 0, 0] = 255
    loss = boundary_loss(radius=3)(torch.zeros(1, 4, 4), masks)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-4)


def test_masks_reach_the_head_subsampled_by_nearest_neighbour():
    masks = torch.arange(64).reshape(1, 8, 8)
    assert at_size(masks, (4, 4))[0].tolist() == masks[0, ::2, ::2].tolist()


def test_affinity_net_reads_the_levels_from_its_stride_on():
    features = [torch.zeros(2, 0, 64, 64), torch.rand(2, 8, 32, 32), torch.rand(2, 8, 16, 16),
                torch.rand(2, 16, 8, 8), torch.rand(2, 16, 4, 4), torch.rand(2, 32, 2, 2)]
    channels = [3, 8, 8, 16, 16, 32]
    assert AffinityNet(channels, stride=4, width=8)(features).shape == (2, 16, 16)
    assert AffinityNet(channels, stride=2, width=8)(features).shape == (2, 32, 32)


def test_one_step_without_boundaries_spreads_a_seed_over_the_whole_small_map():
    # A 4 x 4 map at radius 5: every pixel is every other's neighbour (the longest distance is
    # sqrt(18) < 5), every affinity is 1, so one step gives every pixel the map's mean.
    cams = np.zeros((1, 16, 16), np.float32)
    cams[0, 0:4, 0:4] = 1.0
    walked = walked_cams(AffinityConfig(exp_times=0), torch.zeros(4, 4), cams)
    np.testing.assert_allclose(walked, 1.0, atol=1e-5)


def test_a_boundary_wall_keeps_the_walk_on_its_side():
    cams = np.zeros((1, 32, 32), np.float32)
    cams[0, 8:24, 0:8] = 1.0  # a seed in the left part of the image
    boundary = torch.zeros(8, 8)
    boundary[:, 4] = 1.0  # a full wall down column 4 of the 8 x 8 map
    walked = walked_cams(AffinityConfig(exp_times=3), boundary, cams)
    # After 8 steps the left of the wall is lit, the map's right columns (beyond the bilinear
    # reach of the wall's own column) stay dark.
    assert walked[0, :, :12].min() > 0.2
    assert np.abs(walked[0, :, 20:]).max() < 1e-6
