"""The multi-label classifier: a torchvision ResNet, global average pooling and a linear head."""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from pipeline.models.small_maps import use_small_map_convs

ARCHS = {"resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34,
         "resnet50": torchvision.models.resnet50}


def build_classifier(arch: str, num_classes: int, last_stride: int = 2,
                     weights: str = "none") -> nn.Module:
    """A ResNet whose `fc` follows GAP, as the CAM method needs; `last_stride` 1 keeps layer4 dense.
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
        load_backbone(model, weights)
    return use_small_map_convs(model)


def load_backbone(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict (a torchvision checkpoint or one of ours), skipping the head."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    stray = [k for k in missing if not k.startswith("fc.")]
    if stray or unexpected:
        raise ValueError(f"{path}: weights do not fit the backbone (missing {stray[:3]}, "
                         f"unexpected {unexpected[:3]})")
