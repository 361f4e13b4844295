"""How well a run's segmenter agrees with the run's val pseudo-masks, their unsure pixels (255)
counted as background as eval-pseudo scores masks: a way to compare segmenter recipes that reads
no ground-truth mask, only the image labels the pseudo-masks were made from (`pseudo.splits` must
include the val split). Leaving the unsure pixels out instead would let a segmenter paint them
all foreground at no cost, which favours teachers that leave wide unsure bands.

    python bench/agreement.py runs/msrc runs/msrc-trial [--stage eval-seg-r2] [--reference RUN]

One line per run: the mIoU of the stage's val predictions against the pseudo-masks of the same
images, and the background's IoU. A class in neither is left out of the mean, as in eval-seg.
Each run is scored against its own pseudo-masks, which compares segmenters trained on the same
masks; `--reference` scores every run against one run's masks, which compares segmenters trained
on different ones (a segmenter agrees best with the masks it learnt from).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline.data.images import read_mask
from pipeline.metrics import IGNORE, confusion, iou_per_class, mean_iou, unsure_as_background
from pipeline.stages import output_path


def agreement(run: Path, stage: str = "eval-seg", reference: Path | None = None) -> np.ndarray:
    """The confusion matrix [255, 255] of the stage's predictions (columns) against the pseudo-masks
    (rows, 255 as background) of the same image ids, those of `reference` if given, else the
    run's own; one line names a prediction whose pseudo-mask is missing."""
    predictions = output_path(run, stage, "predictions")
    masks = output_path(reference or run, "pseudo", "masks")
    paths = sorted(predictions.glob("*.png"))
    if not paths:
        raise SystemExit(f"{predictions}: no predictions (run {stage} first)")
    matrix = np.zeros((IGNORE, IGNORE), np.int64)
    for path in paths:
        mask = masks / path.name
        if not mask.is_file():
            raise SystemExit(f"{mask}: no pseudo-mask for this prediction (pseudo.splits must include val)")
        matrix += confusion(unsure_as_background(read_mask(mask)), read_mask(path), IGNORE)
    return matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--stage", default="eval-seg", help="eval-seg, eval-seg-r2 or eval-seg-gt")
    parser.add_argument("--reference", type=Path, help="a run whose val pseudo-masks score every run")
    args = parser.parse_args()
    for run in args.runs:
        matrix = agreement(run, args.stage, args.reference)
        print(f"{run}: mIoU against the val pseudo-masks {mean_iou(matrix):.4f}, "
              f"background {iou_per_class(matrix)[0]:.4f}")


if __name__ == "__main__":
    main()
