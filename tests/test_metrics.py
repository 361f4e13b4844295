"""pipeline.metrics: one confusion matrix per split, IoU = TP / (TP + FP + FN), threshold sweep."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics import confusion, iou_per_class, mean_iou, sweep_confusions

# 4 classes: 0 background, 1, 2, 3. Class 3 appears nowhere; 255 is ignore.
GT = np.array([[0, 0, 1, 1],
               [0, 0, 1, 1],
               [0, 2, 2, 255],
               [255, 255, 255, 255]], np.uint8)
PRED = np.array([[0, 1, 1, 1],
                 [0, 0, 1, 0],
                 [2, 2, 0, 3],   # the 3 sits on an ignored GT pixel: it must not count
                 [3, 3, 1, 0]], np.uint8)


def test_confusion_counts_by_hand():
    # Kept pixels (GT != 255), as (gt, pred):
    #   row 0: (0,0) (0,1) (1,1) (1,1)
    #   row 1: (0,0) (0,0) (1,1) (1,0)
    #   row 2: (0,2) (2,2) (2,0)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = 3
    expected[0, 1] = 1
    expected[0, 2] = 1
    expected[1, 1] = 3
    expected[1, 0] = 1
    expected[2, 2] = 1
    expected[2, 0] = 1
    matrix = confusion(GT, PRED, 4)
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.sum() == 11  # 16 pixels - 5 ignored


def test_iou_per_class_by_hand():
    iou = iou_per_class(confusion(GT, PRED, 4))
    # background: TP 3, FP 2 (gt 1 -> 0, gt 2 -> 0), FN 2 (0 -> 1, 0 -> 2): 3 / 7
    # class 1:    TP 3, FP 1 (gt 0 -> 1),           FN 1 (1 -> 0):         3 / 5
    # class 2:    TP 1, FP 1 (gt 0 -> 2),           FN 1 (2 -> 0):         1 / 3
    # class 3:    absent from GT and (non-ignored) prediction:             NaN
    np.testing.assert_allclose(iou[:3], [3 / 7, 3 / 5, 1 / 3])
    assert np.isnan(iou[3])
    # The mean skips the absent class instead of counting it as 0 or 1.
    assert mean_iou(confusion(GT, PRED, 4)) == pytest.approx((3 / 7 + 3 / 5 + 1 / 3) / 3)


def test_class_only_in_prediction_scores_zero_and_counts_in_the_mean():
    gt = np.array([[0, 0], [1, 1]], np.uint8)
    pred = np.array([[0, 2], [1, 1]], np.uint8)
    iou = iou_per_class(confusion(gt, pred, 4))
    # background: TP 1, FN 1 -> 1/2; class 1: 2/2; class 2: TP 0, FP 1 -> 0; class 3: NaN
    np.testing.assert_allclose(iou[:3], [0.5, 1.0, 0.0])
    assert np.isnan(iou[3])
    assert mean_iou(confusion(gt, pred, 4)) == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_background_is_a_class():
    gt = np.zeros((3, 3), np.uint8)
    pred = np.zeros((3, 3), np.uint8)
    pred[0, 0] = 1
    iou = iou_per_class(confusion(gt, pred, 2))
    np.testing.assert_allclose(iou, [8 / 9, 0.0])
    assert mean_iou(confusion(gt, pred, 2)) == pytest.approx(4 / 9)


def test_one_matrix_over_the_split_is_not_a_mean_of_images():
    # Image a: class 1 covers 1 of 1 pixel right; image b: class 1 covers 0 of 3.
    gt_a, pred_a = np.array([[1, 0, 0, 0]], np.uint8), np.array([[1, 0, 0, 0]], np.uint8)
    gt_b, pred_b = np.array([[1, 1, 1, 0]], np.uint8), np.array([[0, 0, 0, 0]], np.uint8)
    total = confusion(gt_a, pred_a, 2) + confusion(gt_b, pred_b, 2)
    # Pooled: class 1 TP 1, FN 3 -> 1/4; background TP 4, FP 3 -> 4/7.
    np.testing.assert_allclose(iou_per_class(total), [4 / 7, 1 / 4])


def test_all_ignored_gives_empty_matrix_and_nan_ious():
    gt = np.full((2, 2), 255, np.uint8)
    matrix = confusion(gt, np.zeros((2, 2), np.uint8), 3)
    assert matrix.sum() == 0
    assert np.isnan(iou_per_class(matrix)).all()


def test_shape_mismatch_and_out_of_range_ids_raise():
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), 2)
    with pytest.raises(ValueError):
        confusion(np.zeros((2, 2), np.uint8), np.full((2, 2), 5, np.uint8), 3)


def _expected_prediction(cams, classes, threshold):
    """The rule by hand, pixel by pixel: background iff the highest CAM <= threshold."""
    out = np.zeros(cams.shape[1:], np.int64)
    for y in range(cams.shape[1]):
        for x in range(cams.shape[2]):
            values = cams[:, y, x]
            out[y, x] = 0 if values.max() <= threshold else classes[int(values.argmax())] + 1
    return out


def test_sweep_confusions_against_hand_made_predictions():
    # Two CAM channels for foreground class indices 0 and 2 (ids 1 and 3) of a 3-class dataset.
    classes = np.array([0, 2])
    cams = np.array([[[0.9, 0.1, 0.0],
                      [0.4, 0.2, 0.05]],
                     [[0.3, 0.6, 0.0],
                      [0.1, 0.35, 0.2]]], np.float32)
    gt = np.array([[1, 3, 0],
                   [1, 255, 3]], np.uint8)
    thresholds = np.array([0.0, 0.15, 0.3, 0.5, 0.95])
    # Hand-made expected label maps (ids), per threshold:
    by_hand = {
        0.0: [[1, 3, 0], [1, 3, 3]],   # pixel (0,2) has max 0.0 <= 0.0 -> background
        0.15: [[1, 3, 0], [1, 3, 3]],  # max at (1,2) is 0.2 > 0.15
        0.3: [[1, 3, 0], [1, 3, 0]],   # (1,1): 0.35 > 0.3 -> id 3; (1,2): 0.2 -> 0
        0.5: [[1, 3, 0], [0, 0, 0]],   # (1,0) 0.4 -> background
        0.95: [[0, 0, 0], [0, 0, 0]],
    }
    out = sweep_confusions(gt, cams, classes, thresholds, 4)
    assert out.shape == (5, 4, 4)
    for t, threshold in enumerate(thresholds):
        pred = np.array(by_hand[float(threshold)], np.uint8)
        np.testing.assert_array_equal(pred, _expected_prediction(cams, classes, threshold))
        np.testing.assert_array_equal(out[t], confusion(gt, pred, 4), err_msg=f"threshold {threshold}")
    # At 0.3: bg TP 1 (0,2), FP 1 (gt 3 at (1,2)); class 1: 2/2; class 3: TP 1, FN 1 -> 1/2
    np.testing.assert_allclose(iou_per_class(out[2]), [1 / 2, 1.0, np.nan, 1 / 2])


def test_sweep_with_no_cams_predicts_background_everywhere():
    gt = np.array([[0, 1], [1, 255]], np.uint8)
    out = sweep_confusions(gt, np.zeros((0, 2, 2), np.float32), np.array([], np.int64),
                           np.array([0.0, 0.5]), 2)
    for matrix in out:
        np.testing.assert_array_equal(matrix, [[1, 0], [2, 0]])


def test_sweep_equals_confusion_on_random_maps():
    rng = np.random.default_rng(0)
    cams = rng.random((3, 16, 16)).astype(np.float32)
    classes = np.array([4, 1, 2])
    gt = rng.integers(0, 6, (16, 16)).astype(np.uint8)
    gt[rng.random((16, 16)) < 0.1] = 255
    thresholds = np.round(np.arange(0, 0.61, 0.05), 4)
    out = sweep_confusions(gt, cams, classes, thresholds, 6)
    for t, threshold in enumerate(thresholds):
        pred = _expected_prediction(cams, classes, threshold)
        np.testing.assert_array_equal(out[t], confusion(gt, pred, 6))


def test_pseudo_counts_by_hand():
    from pipeline.metrics import pseudo_counts, pseudo_scores

    gt = np.array([[0, 1], [1, 255]], np.uint8)
    pseudo = np.array([[0, 255], [1, 1]], np.uint8)  # the unsure pixel counts as background
    matrix, counts = pseudo_counts(gt, pseudo, 2)
    np.testing.assert_array_equal(matrix, [[1, 0], [1, 1]])
    np.testing.assert_array_equal(counts, [2, 2, 3])  # correct, confident, labelled
    assert pseudo_scores(matrix, counts) == {"miou": 0.5, "precision": 1.0, "coverage": 0.6667}
