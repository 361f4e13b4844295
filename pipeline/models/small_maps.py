"""Convolutions on tiny feature maps as one matrix product, for the CPU.

At the benchmark's 64 px a ResNet's layer4 works on 2x2 maps (1x1 on the 32 px pretraining
items). On such maps oneDNN, PyTorch's CPU convolution, runs a 3x3 convolution forward and
backward slower than unfolding the input (im2col) and making one matrix product of all the
batch's output positions, and the classifier's training step spends much of its time there
(`bench/small_maps.py` measures both; figures in docs/performance.md). From 4x4 outputs on,
oneDNN is as fast or faster, so larger maps and other devices keep the usual path. The result
is the same convolution, up to float rounding.
"""
from __future__ import annotations

from torch import nn
from torch.nn import functional as F

# Output positions (height x width) up to which the matrix product is used.
MAX_POSITIONS = 4


class SmallMapConv2d(nn.Conv2d):
    """An `nn.Conv2d` (same parameters and state dict) that runs as unfold + matrix product on the
    CPU when its output has at most MAX_POSITIONS positions."""

    def forward(self, x):
        batch, _, height, width = x.shape
        out_height, out_width = (
            (size + 2 * pad - kernel) // stride + 1
            for size, pad, kernel, stride in zip((height, width), self.padding, self.kernel_size, self.stride))
        if x.device.type != "cpu" or out_height * out_width > MAX_POSITIONS:
            return super().forward(x)
        columns = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        out = columns.transpose(1, 2) @ self.weight.reshape(self.out_channels, -1).t()
        if self.bias is not None:
            out = out + self.bias
        # [N, positions, C] seen as [N, C, H, W]: channels_last, as the rest of the network runs
        return out.transpose(1, 2).reshape(batch, self.out_channels, out_height, out_width)


def _plain(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.groups == 1 and module.dilation == (1, 1)
            and module.padding_mode == "zeros" and isinstance(module.padding, tuple))


def use_small_map_convs(model: nn.Module) -> nn.Module:
    """Switch every plain `nn.Conv2d` of `model` (ungrouped, undilated, zero-padded) to
    `SmallMapConv2d` in place; parameters and state dict keys are unchanged. Returns `model`."""
    for module in model.modules():
        if _plain(module):
            module.__class__ = SmallMapConv2d
    return model
