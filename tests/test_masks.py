"""`write_mask`, the one function every mask of a run goes through, on score arrays small enough
to work out by hand."""
from __future__ import annotations

import numpy as np

from pipeline.config import PseudoConfig
from pipeline.data.images import read_mask
from pipeline.refine.crf import dense_crf
from pipeline.refine.masks import MaskRule, pseudo_rule, write_mask

IMAGE = np.zeros((1, 4, 3), np.uint8)  # one row of four pixels; no CRF reads it here


def test_a_confidence_band_makes_sure_classes_sure_background_and_ignore(tmp_path):
    # Two present classes, label ids 2 and 3; each map is divided by its max (quantile 1).
    cams = np.array([[[1.0, 0.6, 0.3, 0.1]],
                     [[0.2, 0.1, 0.0, 0.5]]], np.float32)
    rule = MaskRule(band=(0.55, 0.25), peak_quantile=1.0)
    mask = write_mask(tmp_path / "a.png", IMAGE, cams, np.array([1, 2]), rule)
    # pixel 0: 1.0 > 0.55 -> id 2; pixel 1: 0.6 > 0.55 -> id 2; pixel 2: 0.3 lies between the
    # levels -> 255; pixel 3: the second map's 0.5 / 0.5 peak = 1.0 -> id 3 (the first's 0.1 loses)
    assert mask.tolist() == [[2, 2, 255, 3]]
    assert read_mask(tmp_path / "a.png").tolist() == mask.tolist()


def test_a_plain_argmax_reads_the_background_from_channel_zero(tmp_path):
    probs = np.array([[[0.7, 0.1, 0.2, 0.4]],   # background
                      [[0.2, 0.8, 0.1, 0.3]],   # class 0 (id 1)
                      [[0.1, 0.1, 0.7, 0.3]]],  # class 1 (id 2)
                     np.float32)
    mask = write_mask(tmp_path / "p.png", IMAGE, probs, np.array([0, 1]), MaskRule())
    assert mask.tolist() == [[0, 1, 2, 0]]
    # Restricted to present classes: the channels after the background are classes 4 and 6.
    restricted = write_mask(tmp_path / "r.png", IMAGE, probs, np.array([4, 6]), MaskRule())
    assert restricted.tolist() == [[0, 5, 7, 0]]


def test_a_crf_refines_the_argmax_as_the_label_crf_does_on_the_scores(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    probs = rng.random((3, 12, 16)).astype(np.float32)
    crf = {"gt_prob": 0.7, "iterations": 5}
    mask = write_mask(tmp_path / "c.png", image, probs, np.array([0, 1]), MaskRule(crf=crf))
    np.testing.assert_array_equal(mask, dense_crf(image, probs, preset="label", **crf).argmax(0))


def test_a_negative_is_all_background_and_a_smaller_scoring_is_written_at_the_file_size(tmp_path):
    none = write_mask(tmp_path / "n.png", IMAGE, np.zeros((0, 1, 4), np.float32), np.array([], int),
                      MaskRule(band=(0.5, 0.3)))
    assert none.tolist() == [[0, 0, 0, 0]]
    probs = np.array([[[0.9, 0.1]], [[0.1, 0.9]]], np.float32)  # a 1 x 2 scoring of a 2 x 4 image
    mask = write_mask(tmp_path / "s.png", IMAGE[:, :2], probs, np.array([0]), MaskRule(), size=(2, 4))
    assert mask.tolist() == [[0, 1]]  # returned at the scoring's size, as it is scored
    assert read_mask(tmp_path / "s.png").tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]


def test_the_pseudo_settings_rule():
    settings = PseudoConfig(fg_threshold_high=0.6, fg_threshold_low=0.4, peak_quantile=0.9, crf=False)
    assert pseudo_rule(settings) == MaskRule(None, (0.6, 0.4), "constant", 0.9)
    power = PseudoConfig(background="power", bg_alpha_high=2.0, bg_alpha_low=16.0, crf_iterations=3)
    rule = pseudo_rule(power)
    assert (rule.band, rule.background, rule.crf["iterations"]) == ((2.0, 16.0), "power", 3)
