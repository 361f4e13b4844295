"""The maps of `explain`: every method, layer and target of a batch of images from one forward
and one backward (`pipeline.cam.layer_gradients`), with the fused map of each method."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.cam import METHODS, cams_from, fuse_layers, layer_gradients, normalise_max
from pipeline.cam.engine import class_targets
from pipeline.explain.anatomy import Anatomy, inspect_model

# How a model's output becomes the score shown beside each class: softmax for a single-label
# classifier (torchvision's ImageNet models), sigmoid for a multi-label one (a camseg run's).
SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda output: output.softmax(dim=1), "sigmoid": torch.sigmoid}


@dataclass
class Explanation:
    """The maps of N images for K targets each, on the CPU.

    `maps[method][layer]` [N, K, h, w] are raw (after the ReLU, before any normalisation) at the
    layer's resolution; "cam" has only the layers a linear head reads through global average
    pooling. `fused[method]` [N, K, H, W] at the input size: each layer's maps divided by their max
    (`normalise_max`), upsampled and fused (`fuse`). `scores` [N, K]: each target class's
    probability (`score_kind`), or a callable target's value. `classes` [N, K] are the class
    indices (None for a callable target).
    """
    maps: dict[str, dict[str, torch.Tensor]]
    fused: dict[str, torch.Tensor]
    scores: torch.Tensor
    classes: torch.Tensor | None
    layers: list[str]
    methods: list[str]
    class_names: list[str] | None = None
    score_kind: str = "softmax"
    fuse: str = "max"
    input_size: tuple[int, int] = (0, 0)

    def heat(self, method: str, layer: str, index: int, target: int) -> torch.Tensor | None:
        """One map divided by its max, [h, w] in [0, 1] (the fused one for layer "fused"), or
        None where the method has no map for that layer."""
        if layer == "fused":
            return self.fused[method][index, target]
        maps = self.maps[method].get(layer)
        return None if maps is None else normalise_max(maps[index, target])

    def target_name(self, index: int, target: int) -> str:
        """"tabby (281)", "class 3" without class names, "target 0" for a callable target."""
        if self.classes is None:
            return f"target {target}"
        class_id = int(self.classes[index, target])
        if self.class_names is None:
            return f"class {class_id}"
        return f"{self.class_names[class_id]} ({class_id})"


def preprocess(images: Sequence[np.ndarray], size: int | tuple[int, int],
               mean: Sequence[float] = (0.485, 0.456, 0.406),
               std: Sequence[float] = (0.229, 0.224, 0.225)) -> torch.Tensor:
    """uint8 RGB images of any size as one normalised batch [N, 3, H, W]: each image whole,
    resized to `size` (an int: square) without keeping its aspect, as the maps then cover it all;
    figures stretch the maps back over the image (`overlay_figure`)."""
    height, width = (size, size) if isinstance(size, int) else size
    resized = [np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
               for image in images]
    batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255.0
    return (batch - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def class_indices(classes: Sequence[int | str], class_names: Sequence[str] | None, outputs: int) -> list[int]:
    """Class names (case ignored) or indices as indices, checked against the model's outputs."""
    lowered = {name.lower(): index for index, name in enumerate(class_names or [])}
    indices = []
    for wanted in classes:
        text = str(wanted).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < outputs:
                raise ValueError(f"class index {index} is out of range: the model has {outputs} outputs")
        elif text.lower() in lowered:
            index = lowered[text.lower()]
        else:
            known = f"classes: {', '.join(list(class_names)[:8])}, ..." if class_names else \
                "the model has no class names: give indices"
            raise ValueError(f"unknown class '{text}' ({known})")
        indices.append(index)
    return indices


def default_methods(heads: Mapping[str, nn.Module], callable_target: bool) -> list[str]:
    """Every method of the engine that works here: "cam" needs a head and class targets."""
    return [method for method in METHODS if method != "cam" or (heads and not callable_target)]


def gap_heads(model: nn.Module, anatomy: Anatomy, layers: list[str]) -> dict[str, nn.Module]:
    """{layer: the model's last linear layer} for the layers among `layers` whose spatial mean is
    that layer's input: the layers where CAM is the model's own decomposition of its logits."""
    head = dict(model.named_modules()).get(anatomy.head)
    return {name: head for name in layers if name in anatomy.gap_layers}


def explain(model: nn.Module, images: torch.Tensor, layers: list[str] | None = None,
            methods: Sequence[str] | None = None, top_k: int = 3,
            classes: Sequence[int | str] | torch.Tensor | None = None,
            target: Callable[[torch.Tensor], torch.Tensor] | None = None,
            class_names: Sequence[str] | None = None, scores: str = "softmax",
            heads: Mapping[str, nn.Module] | None = None, fuse: str = "max",
            batch_size: int = 16) -> Explanation:
    """The maps of `images` (normalised [N, 3, H, W], e.g. from `preprocess`) for `model` (in
    eval mode; any classifier whose layers output [N, C, h, w] maps).

    Targets: the `top_k` classes of each image (the default), or `classes` (names or indices for
    every image, or an [N, K] tensor), or `target`, a callable from the model's output to [N, K]
    scores (a regression output, the similarity to a reference embedding). `layers` default to the
    last block of each stage, `methods` to every engine method that works for the model ("cam"
    where a linear head follows global average pooling; `heads={layer: linear}` gives other
    layers heads, e.g. from `pipeline.cam.fit_cam_heads`). One forward and one backward per batch
    of `batch_size` serve every method, layer and target.
    """
    size = tuple(images.shape[-2:])
    named_classes = classes is not None and not isinstance(classes, torch.Tensor)
    anatomy = inspect_model(model, size) if layers is None or heads is None or named_classes else None
    if layers is None:
        layers = anatomy.stages
        if not layers:
            raise ValueError("found no layer with [N, C, h, w] feature maps: name them in `layers`")
    layers = list(layers)
    if heads is None:
        heads = gap_heads(model, anatomy, layers)
    heads = {name: head for name, head in heads.items() if name in layers}
    methods = list(methods or default_methods(heads, target is not None))
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise ValueError(f"unknown CAM method '{unknown[0]}' (choose from {', '.join(METHODS)})")
    if "cam" in methods and (target is not None or not heads):
        raise ValueError(f"method 'cam' needs class targets and a linear head after global average "
                         f"pooling of one of the layers {layers}")
    if named_classes:
        indices = class_indices(classes, class_names, anatomy.outputs)
        classes = torch.tensor(indices)[None].expand(len(images), -1)
    device = next(model.parameters()).device
    parts = [_batch_maps(model, images[start:start + batch_size].to(device), layers, methods, heads,
                         top_k, None if classes is None else classes[start:start + batch_size], target,
                         SCORES[scores])
             for start in range(0, len(images), batch_size)]
    maps = {method: {name: torch.cat([part.maps[method][name] for part in parts])
                     for name in parts[0].maps[method]} for method in methods}
    return Explanation(
        maps=maps, fused={method: fuse_layers(maps[method], size, fuse) for method in methods},
        scores=torch.cat([part.scores for part in parts]),
        classes=None if target is not None else torch.cat([part.classes for part in parts]),
        layers=layers, methods=methods, class_names=None if class_names is None else list(class_names),
        score_kind=scores if target is None else "target", fuse=fuse, input_size=size)


class BatchMaps(NamedTuple):
    maps: dict[str, dict[str, torch.Tensor]]
    scores: torch.Tensor
    classes: torch.Tensor | None


def _batch_maps(model: nn.Module, batch: torch.Tensor, layers: list[str], methods: list[str],
                heads: Mapping[str, nn.Module], top_k: int, classes: torch.Tensor | None,
                target: Callable | None, score_of: Callable) -> BatchMaps:
    """One batch's maps, scores and classes, on the CPU, from one forward and one backward."""
    if target is not None:
        pick = target
    elif classes is not None:
        pick = class_targets(classes)
    else:  # the top-k logits are picked from the very output whose gradients are taken
        def pick(output: torch.Tensor) -> torch.Tensor:
            return output.topk(min(top_k, output.shape[1]), dim=1).values
    passed = layer_gradients(model, batch, layers, pick, backward=any(m != "cam" for m in methods))
    if target is None and classes is None:
        classes = passed.output.topk(min(top_k, passed.output.shape[1]), dim=1).indices
    maps = {method: {name: layer_maps.cpu()
                     for name, layer_maps in cams_from(passed, method, classes, heads).items()}
            for method in methods}
    if target is not None:
        return BatchMaps(maps, passed.scores.cpu(), None)
    classes = classes.to(passed.output.device)
    return BatchMaps(maps, score_of(passed.output).gather(1, classes).cpu(), classes.cpu())
