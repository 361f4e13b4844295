"""Faithfulness scores against pytorch-grad-cam 1.5.7 on the same model and maps, and against
values worked out by hand on a model whose logits are sums of pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from pipeline.cam.faithfulness import (confidence_change, noisy_linear_imputation, removal_masks, road,
                                       sigmoid_scores, softmax_scores)

ATOL = 1e-4
# pytorch-grad-cam hands torch tensors to np.argwhere, which NumPy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")
CLASSES = torch.tensor([[1, 3], [0, 7]])  # K = 2 targets for each of N = 2 images


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def maps():
    """Smooth max-normalised maps [2, 2, 32, 32] like upsampled CAMs, with a little noise so that
    no two pixels tie (where maps tie, ours and pytorch-grad-cam's removals differ on purpose)."""
    generator = torch.Generator().manual_seed(2)
    coarse = F.interpolate(torch.rand(2, 2, 4, 4, generator=generator), size=(32, 32), mode="bilinear")
    maps = coarse + 0.01 * torch.rand(coarse.shape, generator=generator)
    maps = maps / maps.amax(dim=(2, 3), keepdim=True)
    assert all(m.unique().numel() == m.numel() for m in maps.flatten(0, 1))
    return maps


@pytest.fixture
def quiet_theirs(monkeypatch):
    """pytorch-grad-cam's ROAD with its imputation noise off: its ROAD classes build a
    NoisyLinearImputer() with the default noise, drawn from torch's global generator (randn_like
    of a transposed tensor, in an order no caller can replay), so only noise=0 makes it comparable."""
    from pytorch_grad_cam.metrics import road as theirs

    class Quiet(theirs.NoisyLinearImputer):
        def __init__(self):
            super().__init__(noise=0.0)

    monkeypatch.setattr(theirs, "NoisyLinearImputer", Quiet)
    return theirs


def targets(kind, k):
    return [kind(int(c)) for c in CLASSES[:, k]]


# --------------------------------------------------------------------- against pytorch-grad-cam

def test_confidence_change_matches_pytorch_grad_cam(resnet, images, maps):
    from pytorch_grad_cam.metrics.cam_mult_image import (CamMultImageConfidenceChange, DropInConfidence,
                                                         IncreaseInConfidence)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    for score, kind in ((softmax_scores, ClassifierOutputSoftmaxTarget), (lambda logits: logits, ClassifierOutputTarget)):
        ours = confidence_change(resnet, images, maps, CLASSES, score, batch_size=3)
        for k in range(2):
            cams, their_targets = maps[:, k].numpy(), targets(kind, k)
            change = CamMultImageConfidenceChange()(images, cams, their_targets, resnet)
            drop = DropInConfidence()(images, cams, their_targets, resnet)
            increase = IncreaseInConfidence()(images, cams, their_targets, resnet)
            np.testing.assert_allclose(ours["change"][:, k], change, rtol=0, atol=ATOL)
            np.testing.assert_array_equal(ours["increase"][:, k], increase)
            if kind is ClassifierOutputSoftmaxTarget:
                np.testing.assert_allclose(ours["drop"][:, k] * ours["score"][:, k] / 100, drop, rtol=0, atol=ATOL)


def test_road_averages_match_pytorch_grad_cam(resnet, images, maps, quiet_theirs):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    ours = road(resnet, images, maps, CLASSES, noise=0.0, batch_size=5)
    for k in range(2):
        cams, their_targets = maps[:, k].numpy(), targets(ClassifierOutputSoftmaxTarget, k)
        for name, metric in (("morf", quiet_theirs.ROADMostRelevantFirstAverage()),
                             ("lerf", quiet_theirs.ROADLeastRelevantFirstAverage()),
                             ("combined", quiet_theirs.ROADCombined())):
            np.testing.assert_allclose(ours[name][:, k], metric(images, cams, their_targets, resnet),
                                       rtol=0, atol=ATOL, err_msg=name)


def test_road_percentile_p_is_pytorch_grad_cams_100_minus_p(resnet, images, maps, quiet_theirs):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    percentiles = (20, 50, 90)
    ours = road(resnet, images, maps, CLASSES, percentiles, noise=0.0)
    assert ours["morf_by_percentile"].shape == (3, 2, 2)
    for i, p in enumerate(percentiles):
        for k in range(2):
            cams, their_targets = maps[:, k].numpy(), targets(ClassifierOutputSoftmaxTarget, k)
            morf = quiet_theirs.ROADMostRelevantFirst(100 - p)(images, cams, their_targets, resnet)
            lerf = quiet_theirs.ROADLeastRelevantFirst(100 - p)(images, cams, their_targets, resnet)
            np.testing.assert_allclose(ours["morf_by_percentile"][i, :, k], morf, rtol=0, atol=ATOL)
            np.testing.assert_allclose(ours["lerf_by_percentile"][i, :, k], lerf, rtol=0, atol=ATOL)


def test_imputation_matches_pytorch_grad_cams_on_a_non_square_image(quiet_theirs):
    generator = torch.Generator().manual_seed(3)
    image = torch.randn(3, 20, 27, generator=generator)
    removed = (torch.rand(20, 27, generator=generator) < 0.6).numpy()
    ours = noisy_linear_imputation(image, removed, noise=0.0)
    theirs = quiet_theirs.NoisyLinearImputer()(image, torch.from_numpy(~removed).float())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert torch.equal(ours[:, ~torch.from_numpy(removed)], image[:, ~torch.from_numpy(removed)])


def test_scores_leave_gradients_alone(resnet, images, maps):
    for parameter in resnet.parameters():
        parameter.grad = torch.ones_like(parameter)
    try:
        confidence_change(resnet, images, maps, CLASSES)
        road(resnet, images, maps, CLASSES, percentiles=(50,))
        assert all(torch.equal(p.grad, torch.ones_like(p)) for p in resnet.parameters())
    finally:
        for parameter in resnet.parameters():
            parameter.grad = None


# ------------------------------------------------------------------------------ worked by hand

class Probe(nn.Module):
    """Logits one can work out: 0 the mean of all values, 1 channel 0's top-left pixel, 2 the mean
    of 1 - x, 3 minus the mean."""

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3))
        return torch.stack([mean, x[:, 0, 0, 0], (1 - x).mean(dim=(1, 2, 3)), -mean], dim=1)


# Distinct values: MoRF takes (1,1) first, then (0,1); LeRF (0,0) first, then (2,2).
MAP = torch.tensor([[0.0, 0.9, 0.3],
                    [0.5, 1.0, 0.4],
                    [0.6, 0.7, 0.1]])


def test_confidence_change_by_hand():
    x = torch.rand(3, 3, 3, generator=torch.Generator().manual_seed(4)) * 0.8 + 0.1
    maps = MAP.expand(1, 3, 3, 3)
    ours = confidence_change(Probe(), x[None], maps, torch.tensor([[0, 2, 3]]), score=lambda logits: logits)
    mean, explained = x.mean(), (x * MAP).mean()
    torch.testing.assert_close(ours["score"][0], torch.stack([mean, 1 - mean, -mean]))
    torch.testing.assert_close(ours["change"][0], torch.stack([explained - mean, mean - explained,
                                                               mean - explained]))
    torch.testing.assert_close(ours["drop"][0, :2], torch.stack([(mean - explained) / mean * 100, torch.tensor(0.)]))
    assert ours["drop"][0, 2].isnan()  # a negative score has no relative drop
    assert ours["increase"][0].tolist() == [0.0, 1.0, 1.0]

    sigmoid = confidence_change(Probe(), x[None], maps[:, :1], torch.tensor([[0]]), score=sigmoid_scores)
    expected = (mean.sigmoid() - explained.sigmoid()) / mean.sigmoid() * 100
    torch.testing.assert_close(sigmoid["drop"][0, 0], expected)


def test_road_by_hand():
    x = torch.rand(3, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (x00, x01, x02), (x10, x11, x12), (x20, x21, x22) = [[x[:, r, c] for c in range(3)] for r in range(3)]
    corners = x00 + x02 + x20 + x22
    # MoRF 10 %: the centre alone, the mean of its 8 neighbours (weights 1/6 and 1/12, summing to 1).
    centre = (x01 + x10 + x12 + x21) / 6 + corners / 12
    # MoRF 20 %: the centre and (0, 1), coupled: centre = s_c + x01 / 6 and, at the top edge
    # (weights 3 x 1/6 + 2 x 1/12 = 2/3), (2/3) x01 = s_01 + centre / 6.
    s_c, s_01 = (x10 + x12 + x21) / 6 + corners / 12, (x00 + x02) / 6 + (x10 + x12) / 12
    centre2 = (s_c + s_01 / 4) * 24 / 23
    top = 1.5 * s_01 + centre2 / 4
    # LeRF 10 %: corner (0, 0), whose neighbours weigh 1/6 + 1/6 + 1/12 = 5/12; LeRF 20 %: also (2, 2).
    corner = (2 * x01 + 2 * x10 + x11) / 5
    corner22 = (2 * x21 + 2 * x12 + x11) / 5
    morf = torch.stack([torch.stack([(centre - x11).sum() / 27, torch.tensor(0.0, dtype=x.dtype)]),
                        torch.stack([(centre2 - x11 + top - x01).sum() / 27, torch.tensor(0.0, dtype=x.dtype)])])
    lerf = torch.stack([torch.stack([(corner - x00).sum() / 27, corner[0] - x00[0]]),
                        torch.stack([(corner - x00 + corner22 - x22).sum() / 27, corner[0] - x00[0]])])

    ours = road(Probe(), x[None].float(), MAP.expand(1, 2, 3, 3), torch.tensor([[0, 1]]), percentiles=(10, 20),
                score=lambda logits: logits, noise=0.0)
    torch.testing.assert_close(ours["morf_by_percentile"][:, 0], morf.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["lerf_by_percentile"][:, 0], lerf.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["morf"][0], morf.mean(0).float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["combined"][0], ((lerf - morf).mean(0) / 2).float(), rtol=0, atol=1e-6)


def test_linear_imputation_reproduces_a_linear_image():
    """Away from the border every pixel of a linear image is the mean of its neighbours: filling
    any interior hole must give the image back."""
    rows, cols = torch.meshgrid(torch.arange(12.0), torch.arange(15.0), indexing="ij")
    image = torch.stack([0.3 * rows - 0.2 * cols, rows + cols, torch.full_like(rows, 2.0)])
    removed = np.zeros((12, 15), dtype=bool)
    removed[2:9, 3:7] = removed[5:10, 9:13] = True
    torch.testing.assert_close(noisy_linear_imputation(image, removed, noise=0.0), image, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------ noise and ties

def test_noise_is_gaussian_on_the_removed_pixels_and_seeded():
    image = torch.randn(3, 40, 40, generator=torch.Generator().manual_seed(6))
    removed = np.zeros((40, 40), dtype=bool)
    removed[5:35, 8:30] = True
    clean = noisy_linear_imputation(image, removed, noise=0.0)
    noisy = noisy_linear_imputation(image, removed, noise=0.05, generator=torch.Generator().manual_seed(0))
    again = noisy_linear_imputation(image, removed, noise=0.05, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    difference = noisy - clean
    assert torch.equal(difference[:, ~torch.from_numpy(removed)], torch.zeros(3, 40 * 40 - 30 * 22))
    assert difference[:, torch.from_numpy(removed)].std().item() == pytest.approx(0.05, rel=0.05)


def test_road_is_reproducible_with_a_seeded_generator(resnet, images, maps):
    def run(noise):
        return road(resnet, images, maps, CLASSES, (30, 70), noise=noise, generator=torch.Generator().manual_seed(7))

    first, second, quiet = run(0.01), run(0.01), run(0.0)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["morf"], quiet["morf"])


def test_tied_pixels_go_only_as_far_as_the_percentile_asks():
    """Half of this map is zero, as after a CAM's ReLU. pytorch-grad-cam's rule (remove what
    reaches the (100 - p)-th percentile) would remove every pixel at MoRF 90 % and all zeros at
    LeRF 10 %; ours removes p % of the pixels, the positive ones before any zero in MoRF."""
    generator = torch.Generator().manual_seed(8)
    relevance = torch.rand(20, 20, generator=generator) * (torch.arange(20) < 10).float()
    flat = relevance.numpy()
    assert not (flat < np.percentile(flat, 100 - 90)).any()  # their MoRF 90 % keeps no pixel

    morf = removal_masks(flat, (10, 50, 90))
    lerf = removal_masks(1 - flat, (10, 50, 90))
    assert morf.reshape(3, -1).sum(1).tolist() == [40, 200, 360]
    assert lerf.reshape(3, -1).sum(1).tolist() == [40, 200, 360]
    assert morf[1].tolist() == (flat > 0).tolist()
    assert (flat[morf[2]] > 0).sum() == 200 and (flat[lerf[0]] == 0).all()
    assert np.array_equal(removal_masks(flat, (90,))[0], morf[2])  # a fixed order: the same pixels again


def test_bad_shapes_and_percentiles_are_refused(resnet, images, maps):
    with pytest.raises(ValueError, match="classes"):
        road(resnet, images, maps, CLASSES[:, :1])
    with pytest.raises(ValueError, match="maps"):
        confidence_change(resnet, images, maps[..., :16], CLASSES)
    with pytest.raises(ValueError, match="between 0 and 100"):
        road(resnet, images, maps, CLASSES, percentiles=(0, 50))
