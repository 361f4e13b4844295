"""Class activation maps for every requested class and layer from one forward and one backward.

Notation (docs/design.md, section 4): A^k is channel k of a layer's activations, y^c the class-c logit
and g^k = dy^c / dA^k. Maps are returned raw: after the ReLU, before any normalisation, at the
layer's own resolution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
FUSIONS = ("max", "mean", "layercam")
LAYERCAM_GAMMA = 2.0  # LayerCAM (Jiang et al. 2021) eq. 9


def _capture(model: nn.Module, layers: list[str], run: Callable[[], torch.Tensor]):
    """Run `run()` with forward hooks that keep each named layer's output."""
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"unknown layer(s) {missing}; e.g. {', '.join(list(modules)[1:8])}")
    kept: dict[str, torch.Tensor] = {}
    handles = [modules[name].register_forward_hook(
        lambda _module, _inputs, output, name=name: kept.__setitem__(name, output)) for name in layers]
    try:
        output = run()
    finally:
        for handle in handles:
            handle.remove()
    return output, [kept[name] for name in layers]


def gradcam_weights(grads: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017, eq. 1): a_k = mean_ij g^k_ij."""
    return grads.mean(dim=(-2, -1))


def gradcam_pp_weights(grads: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19):
    alpha_ij = g^2 / (2 g^2 + sum_ab A_ab g^3), 0 where g = 0;  w_k = sum_ij alpha_ij ReLU(g_ij).
    Where g != 0 the powers of g cancel: alpha = 1 / (2 + sum_ab A_ab g), and where g <= 0 ReLU(g)
    is 0, so w_k = sum_ij ReLU(g_ij) / (2 + sum_ab A_ab g_ij), 0 where that denominator is: the
    same weights in half the passes over the gradients, the largest tensors of the engine."""
    denominator = grads * activations.sum(dim=(-2, -1), keepdim=True)
    denominator += 2
    terms = F.relu(grads) / denominator
    return terms.masked_fill_(denominator == 0, 0).sum(dim=(-2, -1))


def xgradcam_weights(grads: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al. 2020): w_k = sum_ij (A^k_ij / sum_ab A^k_ab) g^k_ij; 0 for a channel
    whose activations are all zero."""
    total = activations.sum(dim=(-2, -1), keepdim=True)
    safe = torch.where(total != 0, total, torch.ones_like(total))
    return (activations / safe * grads).sum(dim=(-2, -1))


def hirescam_pixel_weights(grads: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020): M = ReLU(sum_k g^k * A^k), element-wise, no averaging."""
    return grads


def layercam_pixel_weights(grads: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): M = ReLU(sum_k ReLU(g^k) * A^k), element-wise."""
    return F.relu(grads)


# Methods that weigh each channel by one number, and methods that weigh every position.
GRADIENT_WEIGHTS = {"gradcam": gradcam_weights, "gradcam++": gradcam_pp_weights,
                    "xgradcam": xgradcam_weights}
PIXEL_WEIGHTS = {"hirescam": hirescam_pixel_weights, "layercam": layercam_pixel_weights}


def head_weights(head: nn.Module, classes: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """[N, K, C] class weights of a linear head (fitted heads live on the CPU) on the maps' device."""
    return head.weight.detach().to(activations.device)[classes.to(activations.device)]


def class_targets(classes: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Target function picking logit classes[n, k] of image n: output [N, K]."""
    return lambda logits: logits.gather(1, classes.to(logits.device))


@dataclass
class LayerGradients:
    """What one forward and one batched backward leave, detached: the model's output, the K
    target scores [N, K], and per layer its activations [N, C, h, w] and the gradients of every
    target's score with respect to them [K, N, C, h, w] (None when no backward was asked for)."""
    output: torch.Tensor
    scores: torch.Tensor
    activations: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor] | None


def layer_gradients(model: nn.Module, images: torch.Tensor, layers: list[str],
                    target: Callable[[torch.Tensor], torch.Tensor], backward: bool = True) -> LayerGradients:
    """One forward with hooks on `layers` and, when `backward`, one backward for all K scores
    `target(output)` [N, K] and all layers (`is_grads_batched`); parameters' `.grad` are left
    untouched. `target` sees the output with its graph, so it may pick classes from it (top-k)."""
    if not backward:
        with torch.no_grad():
            output, activations = _capture(model, layers, lambda: model(images))
            return LayerGradients(output, target(output), dict(zip(layers, activations)), None)
    with torch.enable_grad():
        # A leaf that needs grad keeps a graph even when every parameter is frozen.
        inputs = images.detach().requires_grad_(True)
        output, activations = _capture(model, layers, lambda: model(inputs))
        scores = target(output)
        n, k = scores.shape
        one_hot = torch.eye(k, dtype=scores.dtype, device=scores.device)[:, None, :].expand(k, n, k)
        grads = torch.autograd.grad(scores, activations, grad_outputs=one_hot, is_grads_batched=True)
    return LayerGradients(output.detach(), scores.detach(),
                          {name: act.detach() for name, act in zip(layers, activations)},
                          dict(zip(layers, grads)))


def gradient_cam(method: str, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """[N, K, h, w] maps of a gradient method from one layer's activations and gradients."""
    if method in PIXEL_WEIGHTS:
        combined = torch.einsum("knchw,nchw->nkhw", PIXEL_WEIGHTS[method](grads), activations)
    else:
        weights = GRADIENT_WEIGHTS[method](grads, activations.unsqueeze(0))
        combined = torch.einsum("knc,nchw->nkhw", weights, activations)
    return F.relu(combined)


def head_cam(head: nn.Module, classes: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """CAM (Zhou et al. 2016): M^c = ReLU(sum_k w_ck A^k) with the linear head's class weights."""
    return F.relu(torch.einsum("nkc,nchw->nkhw", head_weights(head, classes, activations), activations))


def cams_from(passed: LayerGradients, method: str, classes: torch.Tensor | None = None,
              heads: Mapping[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    """Raw maps {layer: [N, K, h, w]} of `method` from one pass: for "cam", of the layers that
    `heads` gives a linear head, for `classes`; for a gradient method, of every layer."""
    if method == "cam":
        return {name: head_cam(head, classes, passed.activations[name]) for name, head in heads.items()}
    return {name: gradient_cam(method, act, passed.grads[name]) for name, act in passed.activations.items()}


def compute_method_cams(model: nn.Module, images: torch.Tensor, layers: list[str], methods: Sequence[str],
                        classes: torch.Tensor | None = None,
                        target: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        head: str | Mapping[str, nn.Module] = "fc") -> dict[str, dict[str, torch.Tensor]]:
    """Raw maps {method: {layer: [N, K, h, w]}} of several methods from one forward and, unless
    only "cam" is asked for, one backward: `compute_cams` for many methods at the cost of one."""
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise ValueError(f"unknown CAM method '{unknown[0]}' (choose from {', '.join(METHODS)})")
    if (classes is None) == (target is None):
        raise ValueError("give exactly one of `classes` or `target`")
    heads = None
    if "cam" in methods:
        if classes is None:
            raise ValueError("method 'cam' needs `classes` (it reads the head's class weights)")
        given = head if isinstance(head, Mapping) else dict.fromkeys(layers,
                                                                      dict(model.named_modules())[head])
        lacking = [name for name in layers if name not in given]
        if lacking:
            raise ValueError(f"method 'cam' has no head for layer(s) {lacking}")
        heads = {name: given[name] for name in layers}
    passed = layer_gradients(model, images, layers, target or class_targets(classes),
                             backward=any(method != "cam" for method in methods))
    return {method: cams_from(passed, method, classes, heads) for method in methods}


def compute_cams(model: nn.Module, images: torch.Tensor, layers: list[str], method: str = "gradcam",
                 classes: torch.Tensor | None = None,
                 target: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 head: str | Mapping[str, nn.Module] = "fc") -> dict[str, torch.Tensor]:
    """Raw maps {layer: [N, K, h, w]} for K targets per image.

    `classes` [N, K] picks logits; alternatively `target` maps the model output to any [N, K]
    scores (a regression output, an embedding's similarity to a reference). Gradient methods run
    one backward for all K targets and all layers (`is_grads_batched`); parameters' `.grad` are
    left untouched. "cam" needs `classes` and uses the weights of the linear layer named `head`,
    which must follow global average pooling of the layers asked for; for other layers pass
    `head={layer: linear}` with heads fitted on their pooled features (`fit_cam_heads`).
    """
    return compute_method_cams(model, images, layers, [method], classes, target, head)[method]


def normalise_max(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Divide each [.., h, w] map by its spatial max (IRN): a zero map stays zero."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return maps / (peak + eps)


def deepest_layer(maps: dict[str, torch.Tensor]) -> str:
    """The layer whose maps have the fewest positions (the last such one given)."""
    return min(reversed(list(maps)), key=lambda name: maps[name].shape[-2] * maps[name].shape[-1])


def layercam_scaled(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LayerCAM's fusion input (Jiang et al. 2021, eq. 9): each shallow layer's max-normalised map
    M becomes tanh(gamma * M), lifting its weak but precise responses before the max; the deepest
    layer keeps M. (torchcam scales every layer, which makes the fusion a monotone function of
    plain max fusion and so changes nothing but the threshold.)"""
    deepest = deepest_layer(maps)
    return {name: normalise_max(m) if name == deepest else torch.tanh(LAYERCAM_GAMMA * normalise_max(m))
            for name, m in maps.items()}


def fuse_layers(maps: dict[str, torch.Tensor], size: tuple[int, int], mode: str = "max") -> torch.Tensor:
    """Max-normalise each layer's maps, upsample to `size` and fuse them by `max`, `mean` or
    `layercam` (shallow layers tanh-scaled, then max)."""
    if mode not in FUSIONS:
        raise ValueError(f"unknown fusion '{mode}' (choose from {', '.join(FUSIONS)})")
    scaled = layercam_scaled(maps) if mode == "layercam" else {name: normalise_max(m) for name, m in maps.items()}
    resized = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in scaled.values()]
    stacked = torch.stack(resized)
    return stacked.mean(0) if mode == "mean" else stacked.amax(0)
