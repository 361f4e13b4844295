"""Fitting a CAM head: a linear classifier on frozen, globally average-pooled features of one layer.

The original CAM recipe (Zhou et al. 2016) for a layer that no GAP + linear head follows (a
shallow layer of our classifier, or any backbone): the fitted head's class weights turn that
layer's activations into class activation maps, exactly as the classifier's own head does for
its last layer.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.cam.engine import _capture


@torch.inference_mode()
def pooled_features(model: nn.Module, batches: Iterable[torch.Tensor],
                    layers: list[str]) -> dict[str, torch.Tensor]:
    """{layer: [N, C]} global averages of each layer's activations over every image of `batches`
    (each batch moved to the model's device), returned on the CPU."""
    device = next(model.parameters()).device
    pooled: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for images in batches:
        images = images.to(device)
        _, activations = _capture(model, layers, lambda: model(images))
        for name, layer_activations in zip(layers, activations):
            pooled[name].append(layer_activations.mean(dim=(-2, -1)))
    return {name: torch.cat(parts).cpu() for name, parts in pooled.items()}


def fit_linear_head(features: torch.Tensor, targets: torch.Tensor, weight_decay: float = 1e-4,
                    iterations: int = 200) -> nn.Linear:
    """Multi-label logistic regression (BCE) of `targets` [N, K] on `features` [N, C].

    Features are standardised while fitting (so one weight decay suits every layer), and the
    standardisation is folded back into the returned head: `head(features)` gives the logits.
    Full-batch L-BFGS from zeros: the problem is convex, so the result is deterministic.
    """
    features, targets = features.detach().float(), targets.detach().float()
    mean, scale = features.mean(0), features.std(0).clamp_min(1e-6)
    standard = (features - mean) / scale
    weight = torch.zeros(targets.shape[1], features.shape[1], requires_grad=True)
    bias = torch.zeros(targets.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = F.binary_cross_entropy_with_logits(standard @ weight.T + bias, targets)
        value = value + weight_decay * weight.pow(2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    head = nn.Linear(features.shape[1], targets.shape[1])
    with torch.no_grad():
        head.weight.copy_(weight / scale)
        head.bias.copy_(bias - (weight * mean / scale).sum(1))
    return head.eval().requires_grad_(False)


def fit_cam_heads(model: nn.Module, batches: Iterable[torch.Tensor], targets: torch.Tensor,
                  layers: list[str]) -> dict[str, nn.Linear]:
    """A linear head per layer on its pooled features, for `compute_cams(..., method="cam")`."""
    features = pooled_features(model, batches, layers)
    return {name: fit_linear_head(features[name], targets) for name in layers}
