"""The multi-label classifier: a torchvision ResNet, global average pooling and a linear head."""
from __future__ import annotations

import torchvision
from torch import nn

from pipeline.models.small_maps import use_small_map_convs
from pipeline.models.weights import load_weights

ARCHS = {"resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34,
         "resnet50": torchvision.models.resnet50}


def build_classifier(arch: str, num_classes: int, last_stride: int = 2,
                     weights: str = "none") -> nn.Module:
    """A ResNet whose `fc` follows GAP, as the CAM method needs; `last_stride` 1 keeps layer4 dense.
    `weights` ("none", a local state dict or a torchvision weight name) start all but `fc`.
    Its convolutions on tiny maps run as matrix products on the CPU (`models.small_maps`)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown classifier arch '{arch}' (choose from {', '.join(ARCHS)})")
    if last_stride not in (1, 2):
        raise ValueError(f"cls.last_stride must be 1 or 2, not {last_stride}")
    model = ARCHS[arch](weights=None, num_classes=num_classes)
    if last_stride == 1:
        block = model.layer4[0]
        first_conv = block.conv2 if hasattr(block, "conv3") else block.conv1
        first_conv.stride = (1, 1)
        block.downsample[0].stride = (1, 1)
    if weights != "none":
        load_weights(model, arch, weights, "cls.weights", untouched=("fc.",))
    return use_small_map_convs(model)
