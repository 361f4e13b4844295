"""Faithfulness of saliency maps: how much a classifier's score rests on what a map points at.

Confidence change (Chattopadhyay et al. 2018, Grad-CAM++ section 6.1) shows the model the image
multiplied by the map; ROAD (Rong et al. 2022) removes the most or the least relevant pixels and
fills them from their neighbours, so that the shape of the holes tells the model nothing. Every
perturbed image goes through the model in batches; the results are per-(image, target) CPU
tensors whose means over images are the papers' numbers.

`score` turns logits [B, C] into the scores compared: `softmax_scores` for a single-label
classifier, `sigmoid_scores` for a multi-label one (camseg's), `lambda logits: logits` for raw
logits. pytorch-grad-cam (`pytorch_grad_cam.metrics`) computes the same quantities one target per
call; each function's docstring says how its numbers map onto ours.
"""
from __future__ import annotations

import functools
import itertools
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import splu
from torch import nn

Score = Callable[[torch.Tensor], torch.Tensor]

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)

# ROAD's linear imputation weights: 1/6 for the four neighbours across an edge, 1/12 for the four
# across a corner; (row offset, column offset, weight).
NEIGHBOURS = tuple((dy, dx, 1 / 6 if dy == 0 or dx == 0 else 1 / 12)
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


def softmax_scores(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=1)


def sigmoid_scores(logits: torch.Tensor) -> torch.Tensor:
    return logits.sigmoid()


def _check(images: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor) -> None:
    if images.ndim != 4 or maps.ndim != 4:
        raise ValueError(f"images [N, 3, H, W] and maps [N, K, H, W], got {tuple(images.shape)} and "
                         f"{tuple(maps.shape)}")
    if maps.shape[0] != images.shape[0] or maps.shape[2:] != images.shape[2:]:
        raise ValueError(f"maps {tuple(maps.shape)} must be [N, K, H, W] for images {tuple(images.shape)}")
    if classes.shape != maps.shape[:2]:
        raise ValueError(f"classes {tuple(classes.shape)} must be [N, K] = {tuple(maps.shape[:2])}")


def _device(model: nn.Module, images: torch.Tensor) -> torch.device:
    """Where the model's first parameter or buffer lives; the images' device for a model without."""
    return next(itertools.chain(model.parameters(), model.buffers()), images).device


def _scores(model: nn.Module, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], score: Score,
            batch_size: int, device: torch.device) -> torch.Tensor:
    """score(model(image))[classes] for each (image [3, H, W], classes [L]) pair, `batch_size`
    images per forward: [pairs, L] on the CPU. `pairs` may be a generator that builds the images
    as the batches need them."""
    pairs = iter(pairs)
    found = []
    with torch.inference_mode():
        while chunk := list(itertools.islice(pairs, batch_size)):
            images = torch.stack([image for image, _ in chunk]).to(device)
            classes = torch.stack([targets for _, targets in chunk]).to(device)
            found.append(score(model(images)).gather(1, classes).float().cpu())
    # Outside inference mode, so that the caller gets ordinary tensors.
    return torch.cat(found)


def confidence_change(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor,
                      score: Score = softmax_scores, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Average Drop and Increase in Confidence (Chattopadhyay et al. 2018, section 6.1).

    The model sees the explanation map E = I * M (each map times its normalised image) and its
    score O for the map's class is set against Y, the score on the image itself. Returns [N, K]:
    - `drop` = max(0, Y - O) / Y * 100, lower is better; its mean over images is Average Drop %.
      NaN where Y <= 0 (a raw logit can be), where a relative drop means nothing.
    - `increase` = 1 where O > Y else 0, higher is better; its mean * 100 is Increase in Confidence %.
    - `change` = O - Y and `score` = Y.

    pytorch-grad-cam's `CamMultImageConfidenceChange` is `change`; its `DropInConfidence` is
    max(0, -change), the drop neither divided by Y nor in percent (= drop * score / 100); its
    `IncreaseInConfidence` is `increase`.
    """
    _check(images, maps, classes)
    device = _device(model, images)
    n, k = classes.shape
    maps = maps.to(images.device)
    base = _scores(model, zip(images, classes), score, batch_size, device)
    explained = ((images[i] * maps[i, j], classes[i, j:j + 1]) for i in range(n) for j in range(k))
    change = _scores(model, explained, score, batch_size, device).view(n, k) - base
    drop = torch.where(base > 0, (-change).clamp(min=0) / base * 100, torch.nan)
    return {"drop": drop, "increase": (change > 0).float(), "change": change, "score": base}


@functools.lru_cache(maxsize=8)
def _tie_order(size: int) -> np.ndarray:
    """A fixed pseudo-random order of a map's pixels, in which tied pixels are taken."""
    return np.random.default_rng(0).permutation(size)


def removal_masks(ranking: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """[P, H, W] masks of a ranking [H, W], True on the p % pixels ranked highest, one per p.

    A pixel goes where it reaches the (100 - p)-th percentile of the ranking (numpy's linear
    interpolation), as in pytorch-grad-cam: on a map without ties these are exactly its pixels.
    A block of equal values at that threshold (the zeros of a ReLU'd CAM) would go all together
    there, up to emptying the image of a map with many zeros; here only as many of them go as
    p % asks, taken in a fixed pseudo-random order, much as the ROAD authors' code breaks ties
    with a little random jitter.
    """
    flat = ranking.reshape(-1)
    # One percentile per call: numpy interpolates a single percentile in the map's precision
    # (float32, as pytorch-grad-cam asks for it) but a list of them in float64.
    thresholds = np.array([np.percentile(flat, 100 - p) for p in percentiles], dtype=flat.dtype)[:, None]
    above, tied = flat > thresholds, flat == thresholds
    ties = tied.sum(1)
    wanted = np.round(np.asarray(percentiles) / 100 * flat.size).astype(int)
    # A single pixel at the threshold is no tie: it goes, as it does in pytorch-grad-cam.
    quota = np.where(ties > 1, np.clip(wanted - above.sum(1), 0, None), ties)
    order = _tie_order(flat.size)
    taken = np.zeros_like(tied)
    taken[:, order] = tied[:, order] & (np.cumsum(tied[:, order], axis=1) <= quota[:, None])
    return (above | taken).reshape(len(percentiles), *ranking.shape)


@functools.lru_cache(maxsize=8)
def _dissection_rank(height: int, width: int) -> np.ndarray:
    """Each pixel's place in a nested-dissection order of the height x width grid.

    A grid line splits a rectangle in two halves that share no neighbour (diagonals included);
    numbering both halves, recursively, before the line keeps the factor of the imputation
    system sparse. Restricted to any set of removed pixels it is still such an order, so one
    order per image size serves every mask.
    """
    order = []

    def split(top: int, bottom: int, left: int, right: int) -> None:
        if (bottom - top) * (right - left) <= 16:
            order.append((np.arange(top, bottom)[:, None] * width + np.arange(left, right)).ravel())
        elif bottom - top >= right - left:
            middle = (top + bottom) // 2
            split(top, middle, left, right)
            split(middle + 1, bottom, left, right)
            order.append(middle * width + np.arange(left, right))
        else:
            middle = (left + right) // 2
            split(top, bottom, left, middle)
            split(top, bottom, middle + 1, right)
            order.append(np.arange(top, bottom) * width + middle)

    split(0, height, 0, width)
    rank = np.empty(height * width, dtype=np.int64)
    rank[np.concatenate(order)] = np.arange(height * width)
    return rank


def _linear_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """`image` [C, H, W] (float64) with its `removed` [H, W] pixels filled by linear imputation.

    Each removed pixel x_i is the weighted mean of its neighbours inside the image, removed or
    not: sum_j w_j (x_i - x_j) = 0 with NEIGHBOURS' weights. That is one sparse system over all
    removed pixels, with a right-hand side per channel; it is symmetric and diagonally dominant,
    and positive definite as long as some pixel is kept, so it is factored without pivoting.
    """
    height, width = removed.shape
    rows, cols = np.nonzero(removed)
    count = rows.size
    filled = image.copy()
    if count == 0:
        return filled
    order = np.argsort(_dissection_rank(height, width)[rows * width + cols])
    rows, cols = rows[order], cols[order]
    unknown = np.full((height, width), -1)
    unknown[rows, cols] = np.arange(count)
    diagonal = np.zeros(count)
    rhs = np.zeros((count, image.shape[0]))
    at_rows, at_cols, values = [], [], []
    for dy, dx, weight in NEIGHBOURS:
        r, c = rows + dy, cols + dx
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        equation, r, c = np.flatnonzero(inside), r[inside], c[inside]
        diagonal[equation] += weight
        variable = unknown[r, c]
        free = variable >= 0
        at_rows.append(equation[free])
        at_cols.append(variable[free])
        values.append(np.full(free.sum(), -weight))
        rhs[equation[~free]] += weight * image[:, r[~free], c[~free]].T
    at_rows.append(np.arange(count))
    at_cols.append(np.arange(count))
    values.append(diagonal)
    system = sparse.csc_matrix((np.concatenate(values), (np.concatenate(at_rows), np.concatenate(at_cols))),
                               shape=(count, count))
    factor = splu(system, permc_spec="NATURAL", diag_pivot_thresh=0, options={"SymmetricMode": True})
    filled[:, rows, cols] = factor.solve(rhs).T
    return filled


def noisy_linear_imputation(image: torch.Tensor, removed: np.ndarray, noise: float = 0.01,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """ROAD's noisy linear imputation (Rong et al. 2022): `image` [C, H, W] with the pixels where
    `removed` [H, W] is True replaced by the weighted mean of their neighbours plus N(0, noise^2)
    noise, drawn from `generator` (a CPU one; torch's default when None). Kept pixels are
    returned unchanged. Float32 on the CPU."""
    filled = torch.from_numpy(_linear_imputation(image.detach().cpu().double().numpy(), removed)).float()
    if noise:
        holes = torch.from_numpy(removed)
        filled[:, holes] += noise * torch.randn(filled.shape[0], int(holes.sum()), generator=generator)
    return filled


def road(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor,
         percentiles: Sequence[float] = PERCENTILES, score: Score = softmax_scores, batch_size: int = 64,
         *, noise: float = 0.01, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """ROAD, RemOve And Debias (Rong et al. 2022): the score change when the p % most relevant
    pixels (MoRF) or least relevant ones (LeRF) are removed and filled by noisy linear imputation.

    For each percentile p (a percentage of pixels, 0 < p < 100) and map, `removal_masks` picks
    the pixels (by M for MoRF, by 1 - M for LeRF) and `noisy_linear_imputation` fills them
    (`noise`, `generator`; noise=0 makes it deterministic). Returns, with
    change = score(perturbed) - score(image) for the map's class:
    - `morf` [N, K]: the change averaged over percentiles; negative, lower (a bigger drop) is better.
    - `lerf` [N, K]: the same with the least relevant pixels removed; higher is better.
    - `combined` [N, K] = (lerf - morf) / 2, higher is better.
    - `morf_by_percentile`, `lerf_by_percentile` [P, N, K]: the change at each percentile.

    pytorch-grad-cam's `percentile=q` removes 100 - q % of the pixels (it keeps those below the
    q-th percentile), in both orders: our p is its 100 - p, so `morf_by_percentile[i]` is its
    `ROADMostRelevantFirst(100 - p_i)` and `lerf_by_percentile[i]` its
    `ROADLeastRelevantFirst(100 - p_i)`. Over the default percentiles, which are symmetric, `morf`,
    `lerf` and `combined` are its `ROADMostRelevantFirstAverage`, `ROADLeastRelevantFirstAverage`
    and `ROADCombined` (also (lerf - morf) / 2). Its noise comes from torch's global generator;
    the pixels removed differ from ours only where a map ties at a threshold (`removal_masks`).
    """
    _check(images, maps, classes)
    if not all(0 < p < 100 for p in percentiles):
        raise ValueError(f"percentiles must lie strictly between 0 and 100, got {list(percentiles)}")
    device = _device(model, images)
    n, k = classes.shape
    base = _scores(model, zip(images, classes), score, batch_size, device)
    relevance = maps.detach().cpu().numpy()
    originals = images.detach().cpu()

    def perturbed(ranking: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(n):
            for j in range(k):
                for removed in removal_masks(ranking[i, j], percentiles):
                    yield noisy_linear_imputation(originals[i], removed, noise, generator), classes[i, j:j + 1]

    result = {}
    for name, ranking in (("morf", relevance), ("lerf", 1 - relevance)):
        after = _scores(model, perturbed(ranking), score, batch_size, device).view(n, k, len(percentiles))
        change = after.permute(2, 0, 1) - base
        result[f"{name}_by_percentile"] = change.contiguous()
        result[name] = change.mean(0)
    result["combined"] = (result["lerf"] - result["morf"]) / 2
    return result
