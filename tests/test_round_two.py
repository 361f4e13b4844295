"""The second round's pseudo-masks from a segmenter's softmax, on hand-made probabilities."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import PseudoConfig
from pipeline.refine.masks import known_class_probs, pseudo_mask


def test_known_class_probs_keep_background_and_the_labelled_classes_renormalised():
    probs = np.array([0.1, 0.2, 0.3, 0.4], np.float32).reshape(4, 1, 1)  # background, classes 0-2
    known = known_class_probs(probs, np.array([1]))
    assert known.dtype == np.float32 and known.shape == (2, 1, 1)
    np.testing.assert_allclose(known[:, 0, 0], [0.25, 0.75], rtol=1e-6)
    both = known_class_probs(probs, np.array([0, 2]))
    np.testing.assert_allclose(both[:, 0, 0], [0.1 / 0.7, 0.2 / 0.7, 0.4 / 0.7], rtol=1e-6)


def test_a_class_no_pixel_favours_still_gets_its_most_likely_pixels():
    """Every softmax channel but an unlabelled class is near 0 here: restricted to the labelled
    class, its weak channel (peak 0.04) decides, as a weak seed would after max-normalising."""
    probs = np.zeros((3, 1, 4), np.float32)
    probs[2] = 0.96  # an unlabelled class the segmenter wrongly sees everywhere
    probs[1, 0] = [0.04, 0.03, 0.015, 0.0]
    probs[0] = 1 - probs[1] - probs[2]
    known = known_class_probs(probs, np.array([0]))
    # the class's share of background + class: 1.0, 0.75, 0.375, 0.0 of its peak (0.04 / 0.04)
    np.testing.assert_allclose(known[1, 0], [1.0, 0.75, 0.375, 0.0], atol=1e-5)
    settings = PseudoConfig(fg_threshold_high=0.5, fg_threshold_low=0.3, crf=False)
    mask = pseudo_mask(settings, np.zeros((1, 4, 3), np.uint8), known[1:], np.array([0]))
    # above 0.5: the class (id 1); between 0.3 and 0.5: unsure (255); below 0.3: background
    assert mask.tolist() == [[1, 1, 255, 0]]


@pytest.mark.parametrize("classes", [np.array([0]), np.array([0, 1])])
def test_probabilities_that_vanish_do_not_divide_by_zero(classes):
    known = known_class_probs(np.zeros((3, 2, 2), np.float32), classes)
    assert np.isfinite(known).all() and (known == 0).all()
