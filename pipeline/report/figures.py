"""Report figures (matplotlib, Agg): threshold sweep, per-class IoU bars, example grid."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from pipeline.cam.seeds import cam_path, load_cams  # noqa: E402
from pipeline.config import Config  # noqa: E402
from pipeline.data import open_split  # noqa: E402
from pipeline.data.images import IGNORE, PALETTE  # noqa: E402
from pipeline.refine.masks import mask_path, pseudo_mask  # noqa: E402
from pipeline.runs import write_with  # noqa: E402

COLOURS = np.array(PALETTE, np.uint8).reshape(256, 3)


def _save(fig, path: Path) -> Path:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def sweep_curve(sweep: dict[str, float], summary: dict, path: Path) -> Path:
    thresholds = [float(t) for t in sweep]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(thresholds, list(sweep.values()), label="seeds")
    ax.axhline(summary["baseline_background_miou"], color="grey", ls=":", label="all background")
    ax.axhline(summary["baseline_fill_miou"], color="grey", ls="--", label="fill present classes")
    ax.axvline(summary["seed_threshold_best"], color="C1", lw=0.8, label="best threshold")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU")
    ax.set_title(f"Seed mIoU by background threshold ({summary['seed_method']}, {summary['seed_layers']})",
                 fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def per_class_bars(per_class: dict[str, dict[str, float]], path: Path) -> Path:
    names = list(next(iter(per_class.values())))
    width = 0.8 / len(per_class)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names)), 3.2))
    for i, (label, values) in enumerate(per_class.items()):
        heights = [0 if v is None or np.isnan(v) else v for v in values.values()]
        ax.bar(np.arange(len(names)) + i * width, heights, width, label=label)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU")
    ax.set_ylim(0, 1)
    # Above the axes: inside them the legend covered the background bars, which reach 0.9 and more.
    ax.legend(fontsize=7, ncols=len(per_class), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return _save(fig, path)


def colourise(labels: np.ndarray) -> np.ndarray:
    return COLOURS[labels]


def example_grid(cfg: Config, seeds: Path, predictions: Path, path: Path) -> Path:
    """Rows of val images: image | fused CAM | pseudo-mask | prediction | ground truth, from the
    folders of the seeds (cams) and of the segmenter's predictions (eval-seg)."""
    voc = open_split(cfg.data, cfg.seg.val_split)
    ids = voc.ids[:cfg.report.examples]
    columns = ["image", "fused CAM", "pseudo-mask", "prediction", "ground truth"]
    fig, axes = plt.subplots(len(ids), len(columns), figsize=(1.6 * len(columns), 1.6 * len(ids)),
                             squeeze=False)
    for row, image_id in enumerate(ids):
        image = voc.image(image_id)
        gt = voc.working_mask(image_id)
        blank = np.full(gt.shape, IGNORE, np.uint8)
        heat = np.zeros(gt.shape, np.float32)
        pseudo = blank
        if cam_path(seeds, image_id).is_file():
            cams, classes = load_cams(cam_path(seeds, image_id), cfg.cam)
            heat = cams.max(0) / (cams.max() + 1e-5)
            pseudo = pseudo_mask(cfg.pseudo, image, cams, classes)
        prediction_file = mask_path(predictions, image_id)
        prediction = voc.read_working_mask(prediction_file, image_id) if prediction_file.is_file() else blank
        panels = [image, heat, colourise(pseudo), colourise(prediction), colourise(gt)]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel, cmap="jet" if panel.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=8)
    names = ["background", *voc.class_names, "ignore"]
    ids_in_legend = [*range(len(voc.class_names) + 1), IGNORE]
    handles = [Patch(color=COLOURS[i] / 255.0, label=name) for i, name in zip(ids_in_legend, names)]
    # The legend sits just under the last row, whatever the number of rows.
    fig.legend(handles=handles, loc="upper center", ncols=min(6, len(handles)), fontsize=7,
               bbox_to_anchor=(0.5, axes[-1, 0].get_position().y0 - 0.01))
    return _save(fig, path)
