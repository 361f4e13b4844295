"""Explain's figures: heatmaps blended over the image, in a grid of methods (rows) by layers and
their fusion (columns), one grid per image and target.

The heat is each map divided by its own max (`normalise_max`), so a grid compares where each
method and layer looks, not how strongly; each panel's caption gives the raw max. Maps are
stretched over the whole image at its own aspect, as the model saw the whole image (resized).
Figures are plain `matplotlib.figure.Figure`s: no pyplot state, no backend switched, so a
notebook shows them as they are.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image
from torch.nn import functional as F

from pipeline.explain.maps import Explanation
from pipeline.runs import write_with

COLOUR_MAP = "jet"
# The heat's opacity grows with it, so cold regions show the image nearly as it is.
ALPHA_COLD, ALPHA_HOT = 0.2, 0.7
DISPLAY_SIDE = 256  # the longer side of each panel's image, in pixels
HEAT_LABEL = "heat: map ÷ its max (per class and map)"
# The grid's geometry, in inches: panel width, gaps, margins for titles, labels and colour bar.
PANEL, GAP, CAPTION, LEFT, TOP, BOTTOM, RIGHT = 2.0, 0.06, 0.22, 0.3, 0.8, 0.1, 1.0


def display_image(image: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """`image` (uint8 RGB, or floats in [0, 1]) as uint8 RGB with its longer side at most `side`."""
    if image.dtype != np.uint8:
        image = np.clip(np.rint(np.asarray(image, np.float64) * 255), 0, 255).astype(np.uint8)
    height, width = image.shape[:2]
    scale = min(1.0, side / max(height, width))
    if scale == 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def heat_overlay(image: np.ndarray, heat: torch.Tensor) -> np.ndarray:
    """uint8 RGB `image` [H, W, 3] with `heat` [h, w] (in [0, 1]) upsampled bilinearly to its size,
    coloured by COLOUR_MAP and blended in with an opacity that grows with the heat."""
    height, width = image.shape[:2]
    heat = F.interpolate(heat[None, None].float(), size=(height, width), mode="bilinear",
                         align_corners=False)[0, 0].clamp(0, 1).numpy()
    colours = matplotlib.colormaps[COLOUR_MAP](heat)[..., :3]
    alpha = (ALPHA_COLD + (ALPHA_HOT - ALPHA_COLD) * heat)[..., None]
    blended = (1 - alpha) * image.astype(np.float64) / 255.0 + alpha * colours
    return np.rint(blended * 255).astype(np.uint8)


def _column_title(result: Explanation, layer: str) -> str:
    if layer == "fused":
        return f"fused ({result.fuse})\n{result.input_size[0]}x{result.input_size[1]}"
    maps = next(result.maps[method][layer] for method in result.methods if layer in result.maps[method])
    return f"{layer}\n{maps.shape[-2]}x{maps.shape[-1]}"


def _caption(result: Explanation, method: str, layer: str, index: int, target: int) -> str:
    if layer == "fused":
        return f"{len(result.maps[method])} layer(s)"
    return f"max {float(result.maps[method][layer][index, target].max()):.3g}"


def overlay_figure(image: np.ndarray, result: Explanation, index: int = 0, target: int = 0,
                   name: str = "") -> Figure:
    """The grid of image `index` of `result` for its target `target`: a row per method, a column
    per layer that some method has maps of and one for the fused map, each panel that map's heat
    blended over `image` (the picture itself, uint8 RGB of any size), a colour bar, and the
    target and score as title (after `name`, the image's name, when given)."""
    picture = display_image(image)
    drawn = [layer for layer in result.layers if any(layer in maps for maps in result.maps.values())]
    columns = [*drawn, "fused"]
    panel_height = PANEL * picture.shape[0] / picture.shape[1]
    rows = len(result.methods)
    width = LEFT + len(columns) * (PANEL + GAP) + RIGHT
    height = TOP + rows * (panel_height + CAPTION) + BOTTOM
    fig = Figure(figsize=(width, height))
    for row, method in enumerate(result.methods):
        for col, layer in enumerate(columns):
            left = LEFT + col * (PANEL + GAP)
            bottom = height - TOP - (row + 1) * (panel_height + CAPTION) + CAPTION
            ax = fig.add_axes((left / width, bottom / height, PANEL / width, panel_height / height))
            ax.set_xticks([])
            ax.set_yticks([])
            heat = result.heat(method, layer, index, target)
            if heat is None:
                ax.imshow(np.full_like(picture, 235))
                ax.text(0.5, 0.5, "no CAM here:\nno linear head reads\nthis layer's average",
                        ha="center", va="center", fontsize=7, color="#555", transform=ax.transAxes)
            else:
                ax.imshow(heat_overlay(picture, heat), interpolation="none")
                ax.set_xlabel(_caption(result, method, layer, index, target), fontsize=7, labelpad=2)
            if row == 0:
                ax.set_title(_column_title(result, layer), fontsize=8)
            if col == 0:
                ax.set_ylabel(method, fontsize=10)
    grid_height = rows * (panel_height + CAPTION) - CAPTION
    bar_height = min(grid_height, 4.0)
    bar_bottom = BOTTOM + CAPTION + grid_height - bar_height
    bar = fig.add_axes(((width - RIGHT + 0.25) / width, bar_bottom / height, 0.15 / width,
                        bar_height / height))
    fig.colorbar(ScalarMappable(Normalize(0, 1), COLOUR_MAP), cax=bar).set_label(HEAT_LABEL, fontsize=8)
    score = float(result.scores[index, target])
    prefix = f"{name}: " if name else ""
    fig.suptitle(f"{prefix}{result.target_name(index, target)}, {result.score_kind} {score:.3f}",
                 y=1 - 0.15 / height, va="top", fontsize=11)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path
