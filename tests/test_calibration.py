"""Label-free calibration: the colour information curve against a direct count, the calibrate
stage on a constructed dataset whose best threshold and layer set are known (with and without its
masks), the ground-truth comparison of eval-calibration on it, and how a run's "auto" thresholds
and candidate layers resolve."""
from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pipeline.cam.seeds import cam_path, save_cams
from pipeline.config import ConfigError, load_config
from pipeline.data.images import save_mask
from pipeline.preflight import model_settings
from pipeline.refine.calibration import colour_index, information_curve, layer_sets, used_choices, with_choices
from pipeline.runs import read_json
from pipeline.stages import calibrate, eval_calibration, settings

SIZE = 48
# Each map falls off as a cone, 1 - d / SLOPE, from the object's centre; the object is the disk
# d < RADIUS. No pixel lies at d = RADIUS (d^2 = 72.25 is no sum of two squares), so at
# t = 1 - RADIUS / SLOPE = 0.60, and at no other threshold of a 0.01 grid, the foreground is the
# object exactly.
RADIUS, SLOPE = 8.5, 21.25
BEST = 0.60
CENTRES = [(20, 22), (26, 18), (23, 27)]
ELSEWHERE = (40, 40)  # where a misleading layer's cone peaks, off every object


def direct_information(foreground: np.ndarray, colours: np.ndarray) -> float:
    """MI(colour; foreground) in nats, from counts of (side, colour) pairs."""
    n = foreground.size
    pairs = Counter(zip(foreground.ravel().tolist(), colours.ravel().tolist()))
    sides = Counter(foreground.ravel().tolist())
    colour_counts = Counter(colours.ravel().tolist())
    return sum(c / n * np.log((c / n) / (sides[s] / n * colour_counts[k] / n)) for (s, k), c in pairs.items())


def test_information_curve_matches_a_direct_count():
    rng = np.random.default_rng(0)
    peak = rng.random((30, 20)).astype(np.float32)
    image = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    image[peak > 0.5] //= 4  # foreground darker: the curve is not flat
    grid = np.round(np.arange(1, 20) * 0.05, 4)
    colours = colour_index(image, 4)
    expected = [direct_information(peak > t, colours) for t in grid]
    np.testing.assert_allclose(information_curve(peak, colours, grid, 4), expected, rtol=1e-9, atol=1e-12)


def test_colour_index_bins_each_channel():
    image = np.array([[[0, 0, 0], [255, 255, 255], [64, 128, 191]]], np.uint8)
    # 4 levels: 0-63 -> 0, 64-127 -> 1, 128-191 -> 2, 192-255 -> 3
    assert colour_index(image, 4).tolist() == [[0, 63, (1 * 4 + 2) * 4 + 2]]


def cone(centre: tuple[int, int]) -> np.ndarray:
    """float32 [1, H, W]: 1 - d / SLOPE from `centre`, clipped at 0."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return np.clip(1 - np.hypot(yy - centre[0], xx - centre[1]) / SLOPE, 0, None)[None].astype(np.float32)


def cone_photo(rng: np.random.Generator, centre: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB image, the cone map [1, H, W], the object's mask): a reddish disk on greenish ground,
    both noisy, so their colours spread over many bins."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    inside = np.hypot(yy - centre[0], xx - centre[1]) < RADIUS
    colour = np.where(inside[..., None], [170, 60, 60], [60, 150, 70])
    image = np.clip(colour + rng.integers(-50, 51, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    return image, cone(centre), inside.astype(np.uint8)


@pytest.fixture
def constructed(tmp_path):
    """A VOC folder of three cone photos and one negative, their seeds in a run's cams folder: one
    layer's, or with `layered`, the max fusion of two layers' (`object`, the cone on the object,
    and `elsewhere`, a cone off it), each layer's maps stored."""
    return constructed_case(tmp_path, layered=False)


@pytest.fixture
def layered(tmp_path):
    return constructed_case(tmp_path, layered=True)


def constructed_case(tmp_path, layered: bool) -> dict:
    root, seeds = tmp_path / "data", tmp_path / "run" / "cams"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    seeds.mkdir(parents=True)
    rng = np.random.default_rng(1)
    layers = ["object", "elsewhere"] if layered else ["layer4"]
    settings = load_config(None, [f"cam.layers=[{','.join(layers)}]", "cam.fuse=max"]).cam
    ids = []
    for index, centre in enumerate([*CENTRES, None]):
        image_id = f"train_{index:05d}"
        if centre is None:  # a negative: no class, no seeds
            image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            cams, mask, classes = np.zeros((0, SIZE, SIZE), np.float32), np.zeros((SIZE, SIZE), np.uint8), []
        else:
            image, cams, mask = cone_photo(rng, centre)
            classes = [0]
        layer_maps = {"object": cams, "elsewhere": cone(ELSEWHERE)[:len(classes)]} if layered else {}
        if layered:
            cams = np.maximum(layer_maps["object"], layer_maps["elsewhere"])
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.png")
        save_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
        save_cams(cam_path(seeds, image_id), cams, np.array(classes, np.int64), settings, layer_maps)
        ids.append(image_id)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.txt").write_text("background\ndisk\n")
    cfg = load_config(None, [f"run_dir={tmp_path}/run", "data.name=voc", f"data.root={root}",
                             "cam.splits=[train]", "pseudo.peak_quantile=1.0", "pseudo.fg_threshold_low=0.05",
                             "pseudo.crf=false", "pseudo.workers=1", "calibrate.fixed_bg_threshold=0.30",
                             "calibrate.fixed_fg_threshold_high=0.40", f"cam.layers=[{','.join(layers)}]",
                             "cam.fuse=max"])
    return {"cfg": cfg, "root": root, "seeds": seeds, "out": tmp_path / "out"}


def run_calibrate(case) -> dict:
    out = case["out"]
    out.mkdir(exist_ok=True)
    calibrate.run(case["cfg"], out, {"seeds": case["seeds"]})
    return read_json(out / calibrate.OUTPUTS["choices"])


def run_eval_calibration(case, calibrated: bool = True, cfg=None) -> dict:
    """eval-calibration's results on `case`, after calibrate where `calibrated` (else as with
    calibration off), with `cfg` or the case's config."""
    choices = None
    if calibrated:
        run_calibrate(case)
        choices = case["out"] / calibrate.OUTPUTS["choices"]
    scored = case["out"] / "scored"
    scored.mkdir(parents=True)
    eval_calibration.run(cfg or case["cfg"], scored, {"seeds": case["seeds"], "calibration": choices})
    return read_json(scored / eval_calibration.OUTPUTS["results"])


def test_calibrate_finds_the_known_best_threshold(constructed):
    choices = run_calibrate(constructed)
    assert choices["images"] == 3  # the negative has no foreground to place
    assert choices["bg_threshold"]["calibrated"] == BEST
    assert choices["fg_threshold_high"]["calibrated"] == BEST
    assert min(choices["fg_threshold_high"]["grid"]) > 0.05  # the high threshold stays above the low


def test_calibrate_chooses_the_layer_on_the_objects(layered):
    choices = run_calibrate(layered)
    assert choices["layers"]["calibrated"] == ["object"]
    assert set(choices["layers"]["information"]) == {"object", "elsewhere", "object+elsewhere"}
    assert (choices["bg_threshold"]["calibrated"], choices["fg_threshold_high"]["calibrated"]) == (BEST, BEST)


def test_eval_calibration_scores_the_layer_sets_on_ground_truth(layered):
    results = run_eval_calibration(layered)
    layers = results["layers"]
    assert (layers["oracle"], layers["calibrated"], layers["used"]) == (["object"], ["object"], ["object"])
    assert (layers["fixed"], layers["used_source"]) == (["object", "elsewhere"], "calibrated")
    assert layers["miou_calibrated"] == 1.0 and layers["sweep"]["elsewhere"] < layers["sweep"]["object+elsewhere"] < 1.0
    # the fixed choice, both layers fused at 0.30, adds the cone elsewhere to each disk of reach SLOPE * 0.7
    assert results["bg_threshold"]["miou_fixed"] < disk_miou(SLOPE * 0.7)
    assert results["fg_threshold_high"]["miou_calibrated"] == results["fg_threshold_high"]["miou_oracle"] == 1.0


def test_eval_calibration_scores_a_fixed_set_that_is_no_candidate(layered):
    """With the layer choice off, the only candidate is cam.layers (set by hand); the fixed set,
    `object` alone, is scored too, at the fixed threshold."""
    cfg = replace(layered["cfg"], calibrate=replace(layered["cfg"].calibrate, choose_layers=False,
                                                    fixed_layers=["object"]))
    results = run_eval_calibration(layered, calibrated=False, cfg=cfg)
    layers = results["layers"]
    assert (layers["used"], layers["used_source"]) == (["object", "elsewhere"], "set by hand")
    assert (layers["fixed"], layers["oracle"]) == (["object"], ["object", "elsewhere"])
    assert results["bg_threshold"]["miou_fixed"] == pytest.approx(disk_miou(SLOPE * 0.7), abs=1e-4)


def test_calibrate_reads_no_mask(constructed):
    with_masks = run_calibrate(constructed)
    shutil.rmtree(constructed["root"] / "SegmentationClass")
    assert run_calibrate(constructed) == with_masks


def test_eval_calibration_scores_the_choices_on_ground_truth(constructed):
    results = run_eval_calibration(constructed)
    for name, fixed in (("bg_threshold", 0.30), ("fg_threshold_high", 0.40)):
        scores = results[name]
        assert (scores["oracle"], scores["calibrated"], scores["fixed"], scores["used"]) == (BEST, BEST, fixed, BEST)
        assert scores["used_source"] == "calibrated"
        assert scores["miou_oracle"] == scores["miou_calibrated"] == 1.0
        assert scores["miou_fixed"] == pytest.approx(disk_miou(SLOPE * (1 - fixed)), abs=1e-4)


def disk_miou(reach: float) -> float:
    """mIoU (background, disk) of the constructed photos, the negative too, when each photo's
    foreground is d < reach: counted pixel by pixel."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    counts = np.zeros((2, 2))
    for centre in CENTRES:
        distance = np.hypot(yy - centre[0], xx - centre[1])
        truth, guess = distance < RADIUS, distance < reach
        counts += [[np.sum(~truth & ~guess), np.sum(~truth & guess)], [np.sum(truth & ~guess), np.sum(truth & guess)]]
    counts[0, 0] += SIZE * SIZE  # the negative: all background, all predicted background
    ious = [counts[k, k] / (counts[k].sum() + counts[:, k].sum() - counts[k, k]) for k in range(2)]
    return float(np.mean(ious))


def test_eval_calibration_without_calibration_scores_the_fixed_values_as_used(constructed):
    results = run_eval_calibration(constructed, calibrated=False)
    for name, fixed in (("bg_threshold", 0.30), ("fg_threshold_high", 0.40)):
        scores = results[name]
        assert (scores["calibrated"], scores["miou_calibrated"]) == (None, None)
        assert (scores["used"], scores["used_source"], scores["oracle"]) == (fixed, "fixed", BEST)
        assert scores["miou_used"] == scores["miou_fixed"] == pytest.approx(disk_miou(SLOPE * (1 - fixed)), abs=1e-4)


def test_a_number_set_by_hand_wins_over_the_calibrated_one():
    choices = {"bg_threshold": {"calibrated": 0.21}, "fg_threshold_high": {"calibrated": 0.33},
               "layers": {"calibrated": ["layer3"]}}
    cfg = load_config(None, ["pseudo.fg_threshold_high=0.45", "cam.layers=[layer3,layer4]"])
    used = used_choices(cfg, choices)
    assert used == {"bg_threshold": {"value": 0.21, "source": "calibrated"},
                    "fg_threshold_high": {"value": 0.45, "source": "set by hand"},
                    "layers": {"value": ["layer3"], "source": "calibrated"}}
    kept = used_choices(load_config(None, ["cam.layers=[layer3,layer4]", "calibrate.choose_layers=false"]), choices)
    assert kept["layers"] == {"value": ["layer3", "layer4"], "source": "set by hand"}


def test_without_calibration_the_layers_are_the_fixed_set():
    cfg = load_config(None, ["cam.layers=[layer3,layer4]", "calibrate.enabled=false", "calibrate.fixed_layers=[layer4]"])
    assert used_choices(cfg, None)["layers"] == {"value": ["layer4"], "source": "fixed"}
    assert with_choices(cfg, None).cam.layers == ["layer4"]
    everything = load_config(None, ["cam.layers=[layer3,layer4]", "calibrate.enabled=false"])
    assert used_choices(everything, None)["layers"] == {"value": ["layer3", "layer4"], "source": "fixed"}


def test_a_fixed_layer_outside_the_candidates_is_one_line():
    with pytest.raises(ConfigError, match=r"^config key 'calibrate.fixed_layers': layer2 not in cam.layers"):
        model_settings(load_config(None, ["cam.layers=[layer3,layer4]", "calibrate.fixed_layers=[layer2]"]))
    # cam.layers left to the backbone is its pooled layer, layer4, which may be the fixed set
    assert model_settings(load_config(None, ["calibrate.fixed_layers=[layer4]"])).cam.layers == ["layer4"]


def test_the_candidate_layer_sets_are_every_subset():
    cfg = load_config(None, ["cam.layers=[layer2,layer3,layer4]"])
    assert layer_sets(cfg) == [["layer2"], ["layer3"], ["layer4"], ["layer2", "layer3"], ["layer2", "layer4"],
                               ["layer3", "layer4"], ["layer2", "layer3", "layer4"]]
    assert layer_sets(load_config(None, ["cam.layers=[layer2,layer3]", "calibrate.choose_layers=false"])) == [
        ["layer2", "layer3"]]


def test_auto_without_calibration_takes_the_fixed_values():
    cfg = load_config(None, ["calibrate.enabled=false", "calibrate.fixed_fg_threshold_high=0.35"])
    resolved = with_choices(cfg, None)
    assert (resolved.eval.bg_threshold, resolved.pseudo.fg_threshold_high) == (0.15, 0.35)
    assert resolved.cam.layers == cfg.cam.layers
    assert (cfg.eval.bg_threshold, cfg.pseudo.fg_threshold_high) == ("auto", "auto")  # the config is left as it was


def test_the_teacher_margin_raises_only_the_calibrated_high_threshold_below_one():
    choices = {"bg_threshold": {"calibrated": 0.40}, "fg_threshold_high": {"calibrated": 0.51},
               "layers": {"calibrated": ["layer4"]}}
    cfg = load_config(None, ["calibrate.teacher_margin=0.2", "cam.layers=[layer3,layer4]"])
    used = used_choices(cfg, choices)
    assert used["fg_threshold_high"]["value"] == pytest.approx(0.71)
    assert used["fg_threshold_high"]["source"] == "calibrated + calibrate.teacher_margin 0.2"
    assert used["bg_threshold"] == {"value": 0.40, "source": "calibrated"}
    high = used_choices(cfg, {**choices, "fg_threshold_high": {"calibrated": 0.90}})["fg_threshold_high"]
    assert high["value"] == pytest.approx(0.99)  # 1.10 capped one step below 1, where no pixel is foreground
    # a number set by hand and the fixed value without calibration are not raised
    assert used_choices(load_config(None, ["calibrate.teacher_margin=0.2", "pseudo.fg_threshold_high=0.6"]),
                        choices)["fg_threshold_high"]["value"] == 0.6
    assert used_choices(load_config(None, ["calibrate.teacher_margin=0.2", "calibrate.enabled=false"]),
                        None)["fg_threshold_high"]["value"] == 0.30


def test_the_teacher_margin_reruns_the_masks_not_the_calibration():
    base, raised = load_config(None, []), load_config(None, ["calibrate.teacher_margin=0.1"])
    assert settings("calibrate", base) == settings("calibrate", raised)
    assert settings("pseudo", base) != settings("pseudo", raised)
