"""The multi-label classifier: a backbone by name (torchvision's ResNets, or any timm
architecture), global average pooling and a linear head."""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.small_maps import use_small_map_convs
from pipeline.models.weights import load_weights

ARCHS = {"resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34,
         "resnet50": torchvision.models.resnet50}


def _torchvision_resnet(arch: str, num_classes: int, last_stride: int) -> nn.Module:
    model = ARCHS[arch](weights=None, num_classes=num_classes)
    if last_stride == 1:
        block = model.layer4[0]
        first_conv = block.conv2 if hasattr(block, "conv3") else block.conv1
        first_conv.stride = (1, 1)
        block.downsample[0].stride = (1, 1)
    return model


def _timm_model(arch: str, num_classes: int, last_stride: int) -> nn.Module:
    """timm's `arch` with average pooling and a linear head; `last_stride` 1 dilates its last
    stage (output stride 16), as timm does for segmentation backbones."""
    import timm  # only an arch outside ARCHS pays for its import
    if not timm.is_model(arch):
        raise ConfigError(f"config key 'cls.arch': '{arch}' is neither a torchvision ResNet "
                          f"({', '.join(ARCHS)}) nor a timm architecture (timm.list_models())")
    stride = {"output_stride": 16} if last_stride == 1 else {}
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, global_pool="avg", **stride)
    except TypeError as error:
        if stride and "output_stride" in str(error):
            raise ConfigError(f"config key 'cls.last_stride': timm's {arch} cannot keep its last stage "
                              f"at the resolution of the one before (it takes no output_stride); use 2") from None
        raise


def head_name(model: nn.Module) -> str:
    """The classifier's last linear layer, the one that follows global average pooling: `fc` in
    a ResNet, timm's own name for it otherwise (`classifier`, `head.fc`)."""
    pretrained = getattr(model, "pretrained_cfg", None)
    return pretrained["classifier"] if pretrained else "fc"


def stage_names(model: nn.Module) -> list[str]:
    """The last module of each stage, input side first: the layers a CAM is usually taken from."""
    info = getattr(model, "feature_info", None)
    if info is None:  # a torchvision ResNet
        return ["layer1", "layer2", "layer3", "layer4"]
    return [stage["module"] for stage in info]


def pooled_layer(model: nn.Module) -> str:
    """The module whose output the head's global pooling reads: a ResNet's `layer4`; in a timm
    model, the stage that ends its features (`stages.3` in a ConvNeXt) or, where modules follow
    the last stage (EfficientNet's `conv_head` and `bn2`), the last of them. One forward pass of
    a blank image finds it, since a module's name does not say where its output goes."""
    if getattr(model, "pretrained_cfg", None) is None:  # a torchvision ResNet
        return stage_names(model)[-1]
    outputs = []
    hooks = [module.register_forward_hook(lambda _module, _inputs, output, name=name: outputs.append((name, output)))
             for name, module in model.named_modules() if name]
    training = model.training  # the probe runs in eval mode, which the caller's model keeps only if it had it
    try:
        with torch.no_grad():
            features = model.eval().forward_features(torch.zeros(1, *model.pretrained_cfg["input_size"]))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    producers = [name for name, output in outputs if output is features]
    stages = stage_names(model)
    return next((name for name in producers if name in stages), producers[-1] if producers else stages[-1])


def build_classifier(arch: str, num_classes: int, last_stride: int = 2,
                     weights: str = "none") -> nn.Module:
    """A backbone whose head follows GAP, as the CAM method needs; `last_stride` 1 keeps the last
    stage at the one before's resolution. `weights` ("none", a local state dict, an offline
    ImageNet name or a torchvision weight name) start all but the head. Its convolutions on tiny
    maps run as matrix products on the CPU (`models.small_maps`)."""
    if last_stride not in (1, 2):
        raise ValueError(f"cls.last_stride must be 1 or 2, not {last_stride}")
    build = _torchvision_resnet if arch in ARCHS else _timm_model
    model = build(arch, num_classes, last_stride)
    if weights != "none":
        load_weights(model, arch, weights, "cls.weights", untouched=(head_name(model) + ".",))
    return use_small_map_convs(model)
