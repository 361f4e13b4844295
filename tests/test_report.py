"""The report's warnings: classes near collapse and a segmenter below its val pseudo-masks."""
from __future__ import annotations

import math

from pipeline.report.build import warnings


def test_warnings_name_weak_classes_and_a_segmenter_below_its_pseudo_masks():
    per_class = {"pseudo-masks": {"background": 0.9, "bag": 0.5, "boot": 0.195},
                 "segmenter": {"background": 0.9, "bag": 0.2, "boot": 0.0, "sandal": math.nan}}
    found = warnings({"seg_miou": 0.503, "seg_pseudo_val_miou": 0.559, "seg_labels": "affinity"}, per_class)
    assert found == ["boot: IoU 0.195 in the pseudo-masks (below 0.2)",
                     "boot: IoU 0.000 in the segmenter (below 0.2)",
                     "the segmenter's val mIoU 0.503 does not beat its val pseudo-masks' (affinity) 0.559"]


def test_no_warnings_for_a_healthy_run():
    per_class = {"segmenter": {"background": 0.9, "bag": 0.2, "boot": None}}
    assert warnings({"seg_miou": 0.6, "seg_pseudo_val_miou": 0.55, "seg_labels": "pseudo"}, per_class) == []
    assert warnings({"seg_miou": 0.6, "seg_pseudo_val_miou": None, "seg_labels": "pseudo"}, per_class) == []
