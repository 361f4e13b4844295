"""Faithfulness of explain's maps: how the classifier's confidence in each target responds when
the pixels a map ranks high are kept or removed (`pipeline.cam.faithfulness`), for every method
and layer and the fused maps, averaged over images and targets and ranked."""
from __future__ import annotations

from importlib import import_module
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.cam import normalise_max
from pipeline.explain.maps import Explanation

# (summary key, column heading, the better direction): ROAD combined first, the ranking's key.
METRICS = (("road_combined", "ROAD combined", "higher"), ("road_morf", "ROAD MoRF", "lower"),
           ("road_lerf", "ROAD LeRF", "higher"), ("average_drop", "average drop %", "lower"),
           ("increase", "share of increased confidence", "higher"))
RANKED_BY = METRICS[0][0]
MODULE = "pipeline.cam.faithfulness"


def faithfulness_module():
    """The module with the scores, imported when first needed."""
    return import_module(MODULE)


def image_size_heat(result: Explanation, method: str, layer: str) -> torch.Tensor:
    """[N, K, H, W] maps in [0, 1] at the input size: each map divided by its max and upsampled
    (layer "fused": the fused maps as they are)."""
    if layer == "fused":
        return result.fused[method]
    maps = normalise_max(result.maps[method][layer])
    return F.interpolate(maps, size=result.input_size, mode="bilinear", align_corners=False).clamp(0, 1)


def faithfulness_scores(model: nn.Module, images: torch.Tensor, result: Explanation,
                        percentiles: Sequence[int] | None = None,
                        batch_size: int = 64) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    """{(method, layer or "fused"): {metric: [N, K]}} for the maps of `result`, computed from
    `images` (the normalised batch they were made from) on `model` with `result`'s score
    (softmax or sigmoid). `percentiles` are ROAD's removal levels (its default when None); its
    imputation noise is seeded, so a rerun gives the same scores."""
    if result.classes is None:
        raise ValueError("faithfulness scores a class's confidence: a callable target has none")
    faith = faithfulness_module()
    score = {"softmax": faith.softmax_scores, "sigmoid": faith.sigmoid_scores}[result.score_kind]
    road_levels = {} if percentiles is None else {"percentiles": tuple(percentiles)}
    device = next(model.parameters()).device
    images, classes = images.to(device), result.classes.to(device)
    scores = {}
    for method in result.methods:
        for layer in [*result.maps[method], "fused"]:
            maps = image_size_heat(result, method, layer).to(device)
            change = faith.confidence_change(model, images, maps, classes, score=score, batch_size=batch_size)
            road = faith.road(model, images, maps, classes, score=score, batch_size=batch_size,
                              generator=torch.Generator().manual_seed(0), **road_levels)
            scores[method, layer] = {
                "average_drop": change["drop"], "increase": change["increase"], "road_morf": road["morf"],
                "road_lerf": road["lerf"], "road_combined": road["combined"]}
    return scores


class FaithfulnessTotals:
    """Sums and counts of every metric over the batches of a command, for means over images and
    targets; NaN (an average drop where the score on the image was not positive) is left out."""

    def __init__(self):
        self.sums: dict[tuple[str, str], dict[str, float]] = {}
        self.counts: dict[tuple[str, str], dict[str, int]] = {}

    def add(self, scores: dict[tuple[str, str], dict[str, torch.Tensor]]) -> None:
        for key, metrics in scores.items():
            sums = self.sums.setdefault(key, dict.fromkeys(metrics, 0.0))
            counts = self.counts.setdefault(key, dict.fromkeys(metrics, 0))
            for name, values in metrics.items():
                known = values[~values.isnan()]
                sums[name] += float(known.double().sum())
                counts[name] += known.numel()

    def ranking(self) -> list[dict]:
        """One row per method and layer, {"method", "layer", metric: mean or None}, best ROAD
        combined first."""
        rows = []
        for (method, layer), sums in self.sums.items():
            counts = self.counts[method, layer]
            rows.append({"method": method, "layer": layer,
                         **{name: round(total / counts[name], 4) if counts[name] else None
                            for name, total in sums.items()}})
        return sorted(rows, key=lambda row: (row[RANKED_BY] is None, -(row[RANKED_BY] or 0.0)))
