"""bench/agreement.py: a run's val predictions scored against its pseudo-masks, 255 as background.
The expected IoUs are worked out by hand."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.images import save_mask
from pipeline.metrics import iou_per_class, mean_iou

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
from agreement import agreement  # noqa: E402


def write(run: Path, name: str, mask: list, prediction: list) -> None:
    save_mask(run / "pseudo" / f"{name}.png", np.array(mask))
    save_mask(run / "eval" / "seg" / "predictions" / f"{name}.png", np.array(prediction))


def test_unsure_pixels_count_as_background_and_absent_classes_out_of_the_mean(tmp_path):
    (tmp_path / "pseudo").mkdir()
    (tmp_path / "eval" / "seg" / "predictions").mkdir(parents=True)
    write(tmp_path, "a", [[0, 0, 1, 255]], [[0, 1, 1, 2]])  # class 2 on the 255 pixel: a background miss
    write(tmp_path, "b", [[2, 2, 0, 0, 1]], [[2, 0, 0, 1, 1]])
    iou = iou_per_class(agreement(tmp_path))
    # background: 2 agree; 5 in the masks (the 255 one included), 3 predicted: 2 / (5 + 3 - 2).
    # class 1: 2 agree; 2 in the masks, 4 predicted: 2 / 4. class 2: 1 agrees; 2 in the masks,
    # 2 predicted: 1 / 3.
    assert iou[:3] == pytest.approx([1 / 3, 1 / 2, 1 / 3])
    assert np.isnan(iou[3:]).all()
    assert mean_iou(agreement(tmp_path)) == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)


def test_a_prediction_without_its_pseudo_mask_is_one_line(tmp_path):
    (tmp_path / "pseudo").mkdir()
    (tmp_path / "eval" / "seg" / "predictions").mkdir(parents=True)
    save_mask(tmp_path / "eval" / "seg" / "predictions" / "a.png", np.zeros((2, 2)))
    with pytest.raises(SystemExit, match=r"pseudo/a.png: no pseudo-mask for this prediction"):
        agreement(tmp_path)


def test_a_reference_runs_masks_score_another_runs_predictions(tmp_path):
    trial, reference = tmp_path / "trial", tmp_path / "reference"
    for run in (trial, reference):
        (run / "pseudo").mkdir(parents=True)
        (run / "eval" / "seg" / "predictions").mkdir(parents=True)
    write(trial, "a", [[1, 1, 1, 1]], [[0, 1, 1, 1]])  # its own mask: class 1 everywhere
    save_mask(reference / "pseudo" / "a.png", np.array([[0, 0, 1, 255]]))
    # against the reference: background 1 agrees, 3 in the mask (the 255 pixel one), 1 predicted:
    # 1 / 3; class 1: 1 agrees, 1 in the mask, 3 predicted: 1 / 3
    assert iou_per_class(agreement(trial, reference=reference))[:2] == pytest.approx([1 / 3, 1 / 3])
    assert iou_per_class(agreement(trial))[:2] == pytest.approx([0.0, 3 / 4])
