"""The report's warnings: classes near collapse and a segmenter below its val pseudo-masks."""
from __future__ import annotations

import math

from pipeline.report.build import step_gains, warnings


def test_warnings_name_weak_classes_and_a_segmenter_below_its_pseudo_masks():
    per_class = {"pseudo-masks": {"background": 0.9, "bag": 0.5, "boot": 0.195},
                 "segmenter": {"background": 0.9, "bag": 0.2, "boot": 0.0, "sandal": math.nan}}
    found = warnings({"seg_miou": 0.503, "seg_pseudo_val_miou": 0.559, "seg_labels": "affinity",
                      "seg_r2_miou": 0.5, "pseudo_r2_val_miou": 0.7}, per_class)
    assert found == ["boot: IoU 0.195 in the pseudo-masks (below 0.2)",
                     "boot: IoU 0.000 in the segmenter (below 0.2)",
                     "the segmenter's val mIoU 0.503 does not beat its val pseudo-masks' (affinity) 0.559",
                     "the round-2 segmenter's val mIoU 0.500 does not beat the first round's 0.503"]


def test_a_mark_above_the_upper_bound_is_called_out_of_the_segmenters_reach():
    summary = {"seg_miou": 0.674, "seg_pseudo_val_miou": 0.746, "seg_labels": "pseudo",
               "seg_upper_bound_miou": 0.708, "seg_r2_miou": None}
    assert warnings(summary, {}) == [
        "the segmenter's val mIoU 0.674 does not beat its val pseudo-masks' (pseudo) 0.746, above the same "
        "segmenter trained on ground truth (0.708): they know each image's classes, which a segmenter "
        "has to find"]
    below_the_upper_bound = {**summary, "seg_upper_bound_miou": 0.75}
    assert warnings(below_the_upper_bound, {}) == [
        "the segmenter's val mIoU 0.674 does not beat its val pseudo-masks' (pseudo) 0.746"]


def test_no_warnings_for_a_healthy_run():
    per_class = {"segmenter": {"background": 0.9, "bag": 0.2, "boot": None}}
    first_round_only = {"seg_r2_miou": None, "pseudo_r2_val_miou": None}
    assert warnings({"seg_miou": 0.6, "seg_pseudo_val_miou": 0.55, "seg_labels": "pseudo", **first_round_only},
                    per_class) == []
    assert warnings({"seg_miou": 0.6, "seg_pseudo_val_miou": None, "seg_labels": "pseudo", **first_round_only},
                    per_class) == []
    assert warnings({"seg_miou": 0.6, "seg_pseudo_val_miou": 0.55, "seg_labels": "pseudo",
                     "seg_r2_miou": 0.62, "pseudo_r2_val_miou": 0.7}, per_class) == []


def test_steps_show_the_gain_of_each_over_the_step_it_refines():
    summary = {"seed_miou_best": 0.40, "pseudo_miou": 0.55, "pseudo_aff_miou": None, "pseudo_r2_miou": 0.75,
               "seg_miou": 0.62, "seg_r2_miou": 0.67}
    assert step_gains(summary) == [
        {"step": "seeds, best threshold (an oracle)", "miou": 0.40, "gain": None},
        {"step": "pseudo-masks (train)", "miou": 0.55, "gain": 0.15},
        {"step": "round-2 pseudo-masks (train)", "miou": 0.75, "gain": 0.2},
        {"step": "segmenter (val)", "miou": 0.62, "gain": None},
        {"step": "round-2 segmenter (val)", "miou": 0.67, "gain": 0.05}]
