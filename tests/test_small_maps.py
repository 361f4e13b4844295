"""Convolutions on tiny maps as matrix products: the same outputs and gradients as F.conv2d."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.models.classifier import build_classifier
from pipeline.models.small_maps import SmallMapConv2d, use_small_map_convs


@pytest.mark.parametrize("in_size, kernel, stride, padding, bias", [
    (2, 3, 1, 1, False),  # layer4's 3x3 convolutions at 64 px
    (4, 3, 2, 1, False),  # layer4's first, from layer3's 4x4
    (4, 1, 2, 0, False),  # its downsampling shortcut
    (1, 3, 1, 1, True),   # 1x1 maps (32 px items), with a bias
    (3, 2, 1, 0, True),   # 2x2 output from an even kernel
    (8, 3, 1, 1, False),  # 64 positions: the usual path
])
def test_small_map_convolution_equals_conv2d_and_its_gradients(in_size, kernel, stride, padding, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, kernel, stride=stride, padding=padding, bias=bias)
    x = torch.randn(3, 6, in_size, in_size, requires_grad=True)
    expected = F.conv2d(x, conv.weight, conv.bias, stride, padding)
    (grad_x, grad_w) = torch.autograd.grad((expected * torch.arange(expected.numel()).view_as(expected)).sum(),
                                           (x, conv.weight))
    use_small_map_convs(conv)
    assert type(conv) is SmallMapConv2d
    got = conv(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    got_x, got_w = torch.autograd.grad((got * torch.arange(got.numel()).view_as(got)).sum(), (x, conv.weight))
    torch.testing.assert_close(got_x, grad_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_w, grad_w, rtol=1e-5, atol=1e-5)


def test_channels_last_input_gives_the_same_output():
    torch.manual_seed(0)
    conv = use_small_map_convs(nn.Conv2d(8, 4, 3, padding=1, bias=False))
    x = torch.randn(2, 8, 2, 2)
    torch.testing.assert_close(conv(x.contiguous(memory_format=torch.channels_last)), conv(x))


def test_only_plain_convolutions_switch_and_state_dict_keys_stay():
    grouped, dilated = nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 3, dilation=2)
    use_small_map_convs(nn.Sequential(grouped, dilated))
    assert type(grouped) is nn.Conv2d and type(dilated) is nn.Conv2d
    torch.manual_seed(0)
    classifier = build_classifier("resnet18", 3)
    assert all(type(m) is SmallMapConv2d for m in classifier.modules() if isinstance(m, nn.Conv2d))
    plain = build_classifier("resnet18", 3)
    for module in plain.modules():
        if isinstance(module, nn.Conv2d):
            module.__class__ = nn.Conv2d
    plain.load_state_dict(classifier.state_dict())  # the same keys and shapes
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(classifier.eval()(images), plain.eval()(images), rtol=1e-4, atol=1e-5)
