"""Class activation maps for every requested class and layer from one forward and one backward.

Notation (DESIGN.md section 4): A^k is channel k of a layer's activations, y^c the class-c logit
and g^k = dy^c / dA^k. Maps are returned raw: after the ReLU, before any normalisation, at the
layer's own resolution.
"""
from __future__ import annotations

from typing import Callable, Mapping

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
    alpha_ij = g^2 / (2 g^2 + sum_ab A_ab g^3), 0 where g = 0;  w_k = sum_ij alpha_ij ReLU(g_ij)."""
    g2 = grads.pow(2)
    g3 = g2 * grads
    denominator = 2 * g2 + activations.sum(dim=(-2, -1), keepdim=True) * g3
    safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    alpha = torch.where((grads != 0) & (denominator != 0), g2 / safe, torch.zeros_like(grads))
    return (alpha * F.relu(grads)).sum(dim=(-2, -1))


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
    `head={layer: linear}` with heads fitted on their pooled features (`fit_cam_head`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method '{method}' (choose from {', '.join(METHODS)})")
    if (classes is None) == (target is None):
        raise ValueError("give exactly one of `classes` or `target`")
    if method == "cam":
        if classes is None:
            raise ValueError("method 'cam' needs `classes` (it reads the head's class weights)")
        with torch.no_grad():
            _, activations = _capture(model, layers, lambda: model(images))
        heads = head if isinstance(head, Mapping) else {name: dict(model.named_modules())[head]
                                                        for name in layers}
        return {name: F.relu(torch.einsum("nkc,nchw->nkhw", head_weights(heads[name], classes, act), act))
                for name, act in zip(layers, activations)}
    score = target or class_targets(classes)
    with torch.enable_grad():
        # A leaf that needs grad keeps a graph even when every parameter is frozen.
        inputs = images.detach().requires_grad_(True)
        output, activations = _capture(model, layers, lambda: model(inputs))
        scores = score(output)
        n, k = scores.shape
        one_hot = torch.eye(k, dtype=scores.dtype, device=scores.device)[:, None, :].expand(k, n, k)
        grads = torch.autograd.grad(scores, activations, grad_outputs=one_hot, is_grads_batched=True)
    maps = {}
    for name, act, grad in zip(layers, activations, grads):
        act = act.detach()
        if method in PIXEL_WEIGHTS:
            combined = torch.einsum("knchw,nchw->nkhw", PIXEL_WEIGHTS[method](grad), act)
        else:
            combined = torch.einsum("knc,nchw->nkhw", GRADIENT_WEIGHTS[method](grad, act.unsqueeze(0)), act)
        maps[name] = F.relu(combined)
    return maps


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
