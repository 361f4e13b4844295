"""What explain needs to know about a classifier it has never seen, found from one forward pass
of a probe image with a hook on every module rather than from a table per architecture:

- its stages: where the feature maps' resolution drops. The default layers are the last block of
  each stage (`layer1.1 ... layer4.1` in a ResNet-18, `features.1 ... features.8` in an
  EfficientNet): shallow ones give detail, deep ones semantics.
- the layers whose global average pool is the input of the model's last linear layer: there,
  and only there, that layer's class weights make a CAM (Zhou et al. 2016).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Children of these are the blocks of a stage; the children of a block are its internals.
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class Anatomy:
    map_layers: list[str]  # every module with a 4-D output [N, C, h, w], in the order they finish
    stages: list[str]  # the last block of each resolution, input side first
    head: str | None  # the last linear layer to run
    gap_layers: list[str]  # the layers whose spatial mean is that head's input
    outputs: int  # the model's output width (classes)


def _blocks(model: nn.Module) -> set[str]:
    """Modules whose parent is a container (a Sequential's elements, a ModuleDict's entries)."""
    return {f"{parent}.{child}" if parent else child
            for parent, module in model.named_modules() if isinstance(module, CONTAINERS)
            for child, _ in module.named_children()}


def last_blocks(finished: list[tuple[str, torch.Size]], blocks: set[str]) -> list[str]:
    """Per resolution (in the order resolutions first appear), the block that finishes last at it,
    among the blocks nearest the top of the module tree: a stage's own blocks, not the layers
    inside a block (which may already work at the next stage's input, or channels-last).
    Resolutions of a single position are left out: such a map shows nothing."""
    finished = [(name, shape) for name, shape in finished if name in blocks]
    top = min((name.count(".") for name, _ in finished), default=0)
    last: dict[tuple[int, int], str] = {}
    for name, shape in finished:
        height, width = shape[-2:]
        if name.count(".") == top and height * width > 1:
            last[height, width] = name
    return list(dict.fromkeys(last.values()))


@torch.no_grad()
def inspect_model(model: nn.Module, size: tuple[int, int]) -> Anatomy:
    """The anatomy of `model` (in eval mode) from a random probe image of `size` (height, width)."""
    outputs: dict[str, torch.Tensor] = {}
    finished: list[tuple[str, torch.Size]] = []
    linear_inputs: list[tuple[str, torch.Tensor]] = []

    def keep(name: str, output) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            outputs[name] = output
            finished.append((name, output.shape))

    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        handles.append(module.register_forward_hook(lambda _m, _i, out, name=name: keep(name, out)))
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(
                lambda _m, inputs, name=name: linear_inputs.append((name, inputs[0]))))
    device = next(model.parameters()).device
    probe = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        result = model(probe)
    finally:
        for handle in handles:
            handle.remove()
    head, head_input = linear_inputs[-1] if linear_inputs else (None, None)
    gap_layers = [] if head is None else [
        name for name, output in outputs.items()
        if output.shape[1] == head_input.shape[-1] and output.shape[-2:].numel() > 1
        and torch.allclose(output.mean(dim=(-2, -1)), head_input.reshape(1, -1), rtol=1e-4, atol=1e-6)]
    return Anatomy(list(dict.fromkeys(name for name, _ in finished)), last_blocks(finished, _blocks(model)),
                   head, gap_layers, result.shape[-1])
