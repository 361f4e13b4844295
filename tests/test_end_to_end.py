"""Every stage, in process, on the procedural shapes dataset (32 px, 64 + 16 images).

One module-scoped run, shared because it takes a while; the tests read its files and check the numbers
each stage reported against numbers recomputed here from those files.
"""
from __future__ import annotations

import math
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cam import fuse_layers
from pipeline.cam.seeds import load_cams
from pipeline.config import config_hash, load_config
from pipeline.data.images import read_mask
from pipeline.data.transforms import normalised_batch
from pipeline.data.voc import VocDataset
from pipeline.metrics import confusion, iou_per_class, mean_iou
from pipeline.models.checkpoints import load_classifier, load_segmenter, predict_scores
from pipeline.models.segmenter import predict_probs
from pipeline.preflight import model_settings
from pipeline.refine.calibration import with_choices
from pipeline.refine.crf import dense_crf
from pipeline.refine.masks import crf_settings
from pipeline.refine.pseudo import confident_mask
from pipeline.report.build import _fmt
from pipeline.runs import MANIFEST, STARTED, StageError, load_manifest, read_json, staging_folder
from pipeline.stages import STAGES, execute, execute_all, pipeline_stages, settings_hash, stage_folder
from pipeline.train import load_checkpoint

pytestmark = pytest.mark.slow  # every stage on a small dataset: `make test-fast` leaves it out

def overrides(tmp):
    return [f"run_dir={tmp}/run", "data.name=shapes", f"data.root={tmp}/data", "data.image_size=32",
            "data.n_train=64", "data.n_val=16", "cls.split=train", "cls.crop_size=32", "cls.epochs=3",
            "cls.batch_size=16", "cam.layers=[layer3,layer4]", "cam.batch_size=16", "pseudo.workers=1",
            "pseudo.splits=[train,val]", "seg.eval_flip=true", "seg.eval_crf=true", "seg.crop_size=32", "seg.epochs=1", "seg.batch_size=8", "report.examples=2",
            "affinity.enabled=true", "affinity.epochs=1", "affinity.batch_size=8", "affinity.crop_size=32",
            "affinity.train_radius=3", "affinity.exp_times=1", "round2.enabled=true"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    torch.manual_seed(0)
    cfg = model_settings(load_config(None, overrides(tmp)))  # with the layers the stages take
    manifests = execute_all(cfg)  # what `python -m pipeline all` (and `make`) runs
    run_dir = tmp / "run"
    return {"tmp": tmp, "cfg": cfg, "dir": run_dir, "manifests": manifests,
            "summary": read_json(run_dir / "report" / "summary.json"),
            "train": VocDataset(tmp / "data", "train"), "val": VocDataset(tmp / "data", "val")}


def results(run, folder):
    return read_json(run["dir"] / folder / "results.json")


def calibrated_thresholds(run) -> dict[str, float]:
    choices = read_json(run["dir"] / "calibrate" / "choices.json")
    return {name: choices[name]["calibrated"] for name in ("bg_threshold", "fg_threshold_high")}


def test_the_calibrated_thresholds_made_the_masks_and_are_scored_beside_the_oracle(run):
    """The pseudo-masks' mIoU as eval-pseudo scored them is eval-calibration's at the calibrated
    high threshold, and the seeds' as eval-cams scored them at the calibrated background threshold:
    the mask stages used the calibrated values, and two code paths agree on their scores."""
    s, calibrated = run["summary"], calibrated_thresholds(run)
    block = s["calibration"]
    high, seeds = block["thresholds"]["fg_threshold_high"], block["thresholds"]["bg_threshold"]
    assert (high["used"], high["used_source"], high["calibrated"]) == (calibrated["fg_threshold_high"], "calibrated",
                                                                       calibrated["fg_threshold_high"])
    assert block["pseudo_miou_calibrated"] == high["miou_calibrated"] == s["pseudo_miou"]
    assert seeds["miou_calibrated"] == s["seed_miou_configured"]
    assert block["pseudo_miou_oracle"] == max(results(run, "eval/calibration")["fg_threshold_high"]["sweep"].values())
    assert (high["fixed"], seeds["fixed"]) == (0.30, 0.15)


def test_the_calibrated_layer_set_made_the_seeds_and_is_scored_beside_the_oracle(run):
    """calibrate chose among the three subsets of cam.layers; eval-cams scored that set's seeds, and
    the oracle's set is the best of the three on ground truth, its threshold the seeds' oracle."""
    block = run["summary"]["calibration"]
    layers, seeds = block["layers"], block["thresholds"]["bg_threshold"]
    sweep = results(run, "eval/calibration")["layers"]["sweep"]
    chosen = read_json(run["dir"] / "calibrate" / "choices.json")["layers"]
    assert set(chosen["information"]) == set(sweep) == {"layer3", "layer4", "layer3+layer4"}
    assert layers["used"] == layers["calibrated"] == chosen["calibrated"] == results(run, "eval/cams")["layers"]
    assert (layers["used_source"], layers["fixed"]) == ("calibrated", ["layer3", "layer4"])
    assert layers["miou_oracle"] == max(sweep.values()) == seeds["miou_oracle"]
    assert layers["miou_fixed"] == sweep["layer3+layer4"]


def test_compare_cams_covers_every_setting_and_agrees_with_the_stored_seeds(run):
    compare = results(run, "eval/compare-cams")
    cfg = run["cfg"]
    assert compare["images"] == 64
    settings = [(row["method"], "+".join(row["layers"])) for row in compare["rows"]]
    assert settings == [(m, "+".join(s)) for m in cfg.eval.compare_methods for s in cfg.eval.compare_layer_sets]
    # The run's setting (its calibrated layer set), computed in memory here, scores what eval-cams
    # found from the float16 files of the cams stage.
    seeds = results(run, "eval/cams")
    used = dict(zip(settings, compare["rows"]))[(cfg.cam.method, "+".join(seeds["layers"]))]
    assert used["best_miou"] == pytest.approx(seeds["best_miou"], abs=0.005)
    s = run["summary"]
    rows = {(row["method"], "+".join(row["layers"])): row["best_miou"] for row in compare["rows"]}
    fused = max(v for (m, layers), v in rows.items() if m == cfg.cam.method and "+" in layers)
    assert s["seed_fused_best_miou"] == fused == rows[(cfg.cam.method, s["seed_fused_best_layers"])]
    assert s["seed_last_layer_miou"] == rows[(cfg.cam.method, "layer4")]
    assert s["seed_fused_gain"] == round(fused - s["seed_last_layer_miou"], 4)


def test_summary_has_every_key_in_range(run):
    s = run["summary"]
    for key in ("seed_miou_best", "seed_threshold_best", "pseudo_miou", "pseudo_precision",
                "pseudo_coverage", "seg_miou", "seg_upper_bound_miou", "seg_ratio", "cls_map",
                "baseline_background_miou", "baseline_fill_miou", "dataset", "git_commit",
                "config_hash", "stage_seconds"):
        assert key in s and s[key] is not None, key
    for key in ("seed_miou_best", "pseudo_miou", "pseudo_precision", "pseudo_coverage", "seg_miou",
                "seg_upper_bound_miou", "cls_map", "baseline_background_miou", "baseline_fill_miou"):
        assert isinstance(s[key], float) and 0.0 <= s[key] <= 1.0, (key, s[key])
    assert s["dataset"] == {"name": "shapes", "seed": 0, "sizes": {"train": 64, "val": 16}}
    assert s["classes"] == ["square", "disc", "cross"]
    assert isinstance(s["git_commit"], str) and s["git_commit"]
    # The config the run's segmenters were trained with, as their checkpoints record it.
    for folder in ("segmenter", "segmenter-r2", "segmenter-gt"):
        assert s["config_hash"] == config_hash(load_checkpoint(run["dir"] / folder / "model.pt")["config"])
    assert re.fullmatch(r"[0-9a-f]{16}", s["config_hash"])
    assert s["seg_upper_bound_miou"] > 0
    assert s["seg_ratio"] == round(s["seg_miou"] / s["seg_upper_bound_miou"], 4)
    assert s["seg_r2_ratio"] == round(s["seg_r2_miou"] / s["seg_upper_bound_miou"], 4)
    manifests = {stage: run["manifests"][stage] for stage in pipeline_stages(run["cfg"])}
    assert list(manifests) == STAGES[:-1]  # every stage but the report, the second round's and the upper bound's too
    assert s["stage_seconds"] == {stage: manifest["seconds"] for stage, manifest in manifests.items()}
    # the total is rounded once more, so it may differ from the rounded parts' sum by that rounding
    assert s["total_seconds"] == pytest.approx(sum(m["seconds"] for m in manifests.values()), abs=0.051)


def test_seed_sweep_best_is_the_max(run):
    s, seeds = run["summary"], results(run, "eval/cams")
    sweep = {float(t): m for t, m in seeds["sweep"].items()}
    assert set(np.round(np.arange(61) * 0.01, 2)) <= set(sweep) and min(sweep) == 0.0
    assert s["seed_threshold_best"] in sweep
    assert s["seed_miou_best"] == max(sweep.values()) == sweep[s["seed_threshold_best"]]
    calibrated = calibrated_thresholds(run)["bg_threshold"]
    assert s["seed_threshold_configured"] == calibrated and seeds["configured_source"] == "calibrated"
    assert s["seed_miou_configured"] == sweep[calibrated]
    chosen = read_json(run["dir"] / "calibrate" / "choices.json")["layers"]["calibrated"]
    assert s["seed_method"] == "gradcam" and s["seed_layers"] == "+".join(chosen)


def test_baselines_recomputed(run):
    voc, n = run["train"], 4
    background = np.zeros((n, n), np.int64)
    fill = np.zeros((n, n), np.int64)
    for image_id in voc.ids:
        gt = voc.mask(image_id)
        background += confusion(gt, np.zeros_like(gt), n)
        fill += confusion(gt, np.full_like(gt, voc.labels(image_id).min() + 1), n)
    # All background: background IoU = its share of the pixels, each (present) class 0.
    share = background[0].sum() / background.sum()
    assert run["summary"]["baseline_background_miou"] == round(share / 4, 4)
    assert run["summary"]["baseline_fill_miou"] == round(mean_iou(fill), 4)


def _average_precision(scores, targets):
    order = np.argsort(-scores, kind="stable")
    hits = targets[order]
    ranks = np.nonzero(hits)[0] + 1
    return np.mean(np.arange(1, len(ranks) + 1) / ranks)


def test_classifier_beats_chance(run):
    model, state = load_classifier(run["dir"] / "classifier" / "model.pt")
    assert state["class_names"] == ["square", "disc", "cross"]
    val = run["val"]
    scores, targets = predict_scores(model, val), val.label_matrix()
    cls_map = np.mean([_average_precision(scores[:, c], targets[:, c]) for c in range(3)])
    assert run["summary"]["cls_map"] == round(cls_map, 4)
    chance = targets.mean()  # the AP of random scores is the positive rate
    assert run["summary"]["cls_map"] > max(0.6, chance + 0.1)
    metrics = run["manifests"]["train-cls"]["metrics"]
    assert metrics["epochs_run"] == 3 and len(metrics["train_loss"]) == 3
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]


def test_cam_files(run):
    files = sorted((run["dir"] / "cams").glob("*.npz"))
    assert len(files) == 80  # cam.splits: train and val
    for voc in (run["train"], run["val"]):
        for image_id in voc.ids:
            with np.load(run["dir"] / "cams" / f"{image_id}.npz", allow_pickle=False) as data:
                cams, classes = data["cams"], data["classes"]
                assert list(data["layers"]) == ["layer3", "layer4"]
                assert str(data["method"]) == "gradcam"
            labels = voc.labels(image_id)
            assert cams.dtype == np.float16 and cams.shape == (len(labels), 32, 32)
            np.testing.assert_array_equal(classes, labels)
            assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1.0


def test_stored_layers_fuse_again_into_the_seeds_and_into_any_subset(run):
    """Each layer's maps are stored max-normalised; fused again they give the stored seeds (to
    float16 precision), and `load_cams` fuses a subset of them, or refuses a layer not stored."""
    cam = run["cfg"].cam
    for image_id in run["val"].ids:
        path = run["dir"] / "cams" / f"{image_id}.npz"
        with np.load(path, allow_pickle=False) as data:
            layers = {name: torch.from_numpy(data[f"layer.{name}"].astype(np.float32))[None]
                      for name in ("layer3", "layer4")}
            fused = data["cams"].astype(np.float32)
        k = len(run["val"].labels(image_id))
        assert layers["layer3"].shape == (1, k, 2, 2) and layers["layer4"].shape == (1, k, 1, 1)
        for maps in layers.values():  # each map peaks at 1, or is 0 everywhere
            peaks = maps.amax(dim=(-2, -1)).numpy()
            assert np.all((np.abs(peaks - 1) < 1e-3) | (peaks == 0))
        np.testing.assert_allclose(fused, fuse_layers(layers, (32, 32), cam.fuse)[0].numpy(), atol=2e-3)
        alone, _ = load_cams(path, replace(cam, layers=["layer3"]))
        np.testing.assert_allclose(alone, fuse_layers({"layer3": layers["layer3"]}, (32, 32), cam.fuse)[0].numpy(),
                                   atol=1e-6)
        with pytest.raises(StageError, match="layer2"):
            load_cams(path, replace(cam, layers=["layer2", "layer3"]))


@pytest.mark.parametrize("folder", ["pseudo", "pseudo-aff", "pseudo-r2"])
def test_pseudo_masks(run, folder):
    voc = run["train"]
    assert len(list((run["dir"] / folder).glob("*.png"))) == 64 + 16  # pseudo.splits: train and val
    for image_id in voc.ids:
        mask = read_mask(run["dir"] / folder / f"{image_id}.png")
        assert mask.shape == (32, 32)
        values = set(np.unique(mask).tolist())
        assert values <= {0, 1, 2, 3, 255}
        assert values <= {0, 255, *(voc.labels(image_id) + 1).tolist()}  # only present classes


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("folder, section, prefix", [("pseudo", None, "pseudo"), ("pseudo-aff", "affinity", "pseudo_aff"),
                                                     ("pseudo-r2", None, "pseudo_r2")])
def test_eval_pseudo_recomputed(run, split, folder, section, prefix):
    voc, n = run[split], 4
    matrix = np.zeros((n, n), np.int64)
    correct = confident = labelled = 0
    for image_id in voc.ids:
        gt = voc.mask(image_id)
        pseudo = read_mask(run["dir"] / folder / f"{image_id}.png")
        valid, sure = gt != 255, pseudo != 255
        labelled += valid.sum()
        confident += (valid & sure).sum()
        correct += (valid & sure & (pseudo == gt)).sum()
        matrix += confusion(gt, np.where(sure, pseudo, 0), n)
    got = results(run, "eval/pseudo-r2" if folder == "pseudo-r2" else "eval/pseudo")
    got = got[section] if section else got
    got = got if split == "train" else got["val"]
    assert got["split"] == split and got["images"] == len(voc.ids)
    assert got["precision"] == round(correct / confident, 4)
    assert got["coverage"] == round(confident / labelled, 4)
    assert got["miou"] == round(mean_iou(matrix), 4)
    if split == "train":
        assert run["summary"][f"{prefix}_precision"] == got["precision"]
        assert run["summary"][f"{prefix}_miou"] == got["miou"]
    else:
        assert run["summary"][f"{prefix}_val_miou"] == got["miou"]


@pytest.mark.parametrize("folder, key", [("eval/seg", "seg_miou"), ("eval/seg-r2", "seg_r2_miou"),
                                         ("eval/seg-gt", "seg_upper_bound_miou")])
def test_eval_seg_recomputed_from_predictions(run, folder, key):
    voc, n = run["val"], 4
    matrix = np.zeros((n, n), np.int64)
    for image_id in voc.ids:
        pred = read_mask(run["dir"] / folder / "predictions" / f"{image_id}.png")
        assert pred.shape == (32, 32) and pred.max() <= 3
        matrix += confusion(voc.mask(image_id), pred, n)
    got = results(run, folder)
    assert got["miou"] == round(mean_iou(matrix), 4) == run["summary"][key]
    per_class = np.round(iou_per_class(matrix), 4)
    for name, value in zip(["background", "square", "disc", "cross"], per_class):
        assert got["per_class_iou"][name] == pytest.approx(value, nan_ok=True)


def test_eval_seg_predictions_are_flip_averaged_and_crf_refined(run):
    """Each saved prediction is the label CRF's argmax over the flip-averaged softmax."""
    cfg, voc = with_choices(run["cfg"], run["dir"] / "calibrate" / "choices.json"), run["val"]
    model, _ = load_segmenter(run["dir"] / "segmenter" / "model.pt", cfg)
    images = [voc.image(i) for i in voc.ids]
    probs = predict_probs(model, normalised_batch(images))
    mirrored = predict_probs(model, normalised_batch([image[:, ::-1] for image in images])).flip(-1)
    averaged = ((probs + mirrored) / 2).numpy()
    for image_id, image, p in zip(voc.ids, images, averaged):
        expected = dense_crf(image, p, preset="label", **crf_settings(cfg.pseudo)).argmax(0)
        saved = read_mask(run["dir"] / "eval" / "seg" / "predictions" / f"{image_id}.png")
        assert np.array_equal(saved, expected)


def test_round_two_masks_are_the_segmenters_known_class_predictions_refined(run):
    """Each second-round mask is the confident mask of the first segmenter's flip-averaged softmax,
    renormalised over the background and the image's labelled classes, their channels taking
    the seeds' place."""
    cfg, voc = with_choices(run["cfg"], run["dir"] / "calibrate" / "choices.json"), run["val"]
    model, _ = load_segmenter(run["dir"] / "segmenter" / "model.pt", cfg)
    images = [voc.image(i) for i in voc.ids]
    probs = predict_probs(model, normalised_batch(images))
    mirrored = predict_probs(model, normalised_batch([image[:, ::-1] for image in images])).flip(-1)
    for image_id, image, p in zip(voc.ids, images, ((probs + mirrored) / 2).numpy()):
        classes = voc.labels(image_id)
        known = p[[0, *(classes + 1)]] / p[[0, *(classes + 1)]].sum(0)
        seeds = known[1:] / (known[1:].max(axis=(1, 2), keepdims=True) + 1e-5)
        expected = confident_mask(image, np.ascontiguousarray(seeds, np.float32), classes,
                                  cfg.pseudo.fg_threshold_high, cfg.pseudo.fg_threshold_low,
                                  crf_settings(cfg.pseudo))
        saved = read_mask(run["dir"] / "pseudo-r2" / f"{image_id}.png")
        assert np.array_equal(saved, expected)


def test_each_segmenter_trains_on_its_masks(run):
    """Each segmenter stage reads the masks it declares (its upstream: the segmenters start from
    no weights here), and the second round's masks come from the first round's segmenter."""
    upstream = {stage: run["manifests"][stage]["upstream"]
                for stage in ("train-seg", "pseudo-r2", "train-seg-r2", "train-seg-gt", "eval-seg-r2", "eval-seg-gt")}
    assert upstream == {"train-seg": ["pseudo"], "pseudo-r2": ["train-seg", "calibrate"], "train-seg-r2": ["pseudo-r2"],
                        "train-seg-gt": ["data"], "eval-seg-r2": ["train-seg-r2"], "eval-seg-gt": ["train-seg-gt"]}
    assert run["manifests"]["eval-pseudo-r2"]["upstream"] == ["pseudo-r2"]


def test_round_two_can_fine_tune_the_first_segmenter_on_a_schedule_of_its_own(run, tmp_path):
    """With round2.start_from=segmenter the second segmenter starts from the first one's weights
    (one step at a vanishing rate leaves its parameters where they were) and reads that checkpoint
    as an input; round2.samples sets its schedule (8 images in batches of 8: one step)."""
    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy)
    base = [o for o in overrides(run["tmp"]) if not o.startswith("run_dir=")] + [f"run_dir={copy}"]
    cfg = load_config(None, base + ["round2.start_from=segmenter", "round2.samples=8", "seg.lr=1e-12"])
    manifest = execute("train-seg-r2", cfg)
    assert manifest["upstream"] == ["pseudo-r2", "train-seg"]
    assert (manifest["metrics"]["schedule_steps"], manifest["metrics"]["epochs_run"]) == (1, 1)
    first, _ = load_segmenter(copy / "segmenter" / "model.pt")
    recorded = load_checkpoint(copy / "segmenter-r2" / "model.pt")
    # the checkpoint records the run's settings as they are: round 2's schedule beside the first's
    assert (recorded["config"]["seg"]["samples"], recorded["config"]["round2"]["samples"]) == (cfg.seg.samples, 8)
    second = recorded["model"]
    from_scratch = load_checkpoint(run["dir"] / "segmenter-r2" / "model.pt")["model"]
    for name, weights in first.named_parameters():
        assert torch.allclose(second[name], weights, atol=1e-6), name
    assert any(not torch.equal(from_scratch[name], weights) for name, weights in first.named_parameters())


def test_every_stage_has_a_manifest(run):
    versions = run["manifests"]["data"]["packages"]
    folders = [stage_folder(stage, run["cfg"]) for stage in STAGES]
    assert len({folder.relative_to(run["dir"]).as_posix() for folder in folders}) == len(STAGES)
    for folder in folders:
        manifest = load_manifest(folder)
        assert manifest is not None, folder
        assert re.fullmatch(r"[0-9a-f]{16}", manifest["hash"]), folder
        assert isinstance(manifest["seconds"], float) and manifest["seconds"] >= 0
        assert manifest["packages"]["torch"] == torch.__version__.split("+")[0]
        assert manifest["packages"] == versions
        assert isinstance(manifest["metrics"], dict)
        assert not (folder / STARTED).exists(), folder
    hashes = [load_manifest(f)["hash"] for f in folders]
    assert len(set(hashes)) == len(hashes)


def test_unchanged_stages_are_skipped(run):
    for stage in STAGES:
        path = stage_folder(stage, run["cfg"]) / MANIFEST
        before = path.stat().st_mtime_ns
        manifest = execute(stage, run["cfg"])
        assert path.stat().st_mtime_ns == before, stage
        assert manifest == read_json(path)


def test_changed_threshold_reruns_eval_cams_only(run, tmp_path):
    """On a copy of the run (models left behind: a stage that needed them would fail loudly)."""
    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy, ignore=shutil.ignore_patterns("*.pt"))
    base = [o for o in overrides(run["tmp"]) if not o.startswith("run_dir=")] + [f"run_dir={copy}"]
    cfg = load_config(None, base + ["eval.bg_threshold=0.3"])
    cams_manifest = copy / "cams" / MANIFEST
    before = cams_manifest.stat().st_mtime_ns
    old = read_json(copy / "eval/cams" / MANIFEST)
    execute("cams", cfg)
    new = execute("eval-cams", cfg)
    assert cams_manifest.stat().st_mtime_ns == before
    assert new["hash"] != old["hash"]
    seeds = read_json(copy / "eval/cams/results.json")
    assert seeds["configured_threshold"] == pytest.approx(0.3)
    assert seeds["configured_miou"] == seeds["sweep"]["0.30"]
    assert seeds["sweep"] == results(run, "eval/cams")["sweep"]  # the seeds themselves did not move
    # Same seed, same machine: same pseudo-masks when the stage is forced to run again.
    same = load_config(None, base)
    execute("pseudo", same, force=True)
    for path in sorted((run["dir"] / "pseudo").glob("*.png")):
        assert (copy / "pseudo" / path.name).read_bytes() == path.read_bytes()


def _numbers(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def test_report_shows_every_number(run):
    text = (run["dir"] / "report" / "report.md").read_text()
    numbers = list(_numbers(run["summary"]))
    assert len(numbers) >= 25
    for value in numbers:
        assert not (isinstance(value, float) and math.isnan(value))
        assert _fmt(value) in text, value
    assert "square" in text and "gradcam" in text


def test_report_links_resolve(run):
    report = run["dir"] / "report"
    html = (report / "index.html").read_text()
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert len(links) >= 3
    for link in links:
        assert not re.match(r"[a-z]+://", link), link  # nothing fetched from elsewhere
        assert (report / link).is_file(), link
    markdown = (report / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(images) == 3
    for link in images:
        assert (report / link).is_file() and (report / link).stat().st_size > 1000


def test_killed_cams_stage_resumes_where_it_stopped(run, tmp_path):
    """A run killed mid-stage (its staging folder: started.json, no manifest) redoes only the
    missing images."""
    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy, ignore=shutil.ignore_patterns("*.pt"))
    shutil.copy2(run["dir"] / "classifier" / "model.pt", copy / "classifier" / "model.pt")
    cfg = load_config(None, [o for o in overrides(run["tmp"]) if not o.startswith("run_dir=")]
                      + [f"run_dir={copy}"])
    folder = copy / "cams"
    manifest = read_json(folder / MANIFEST)
    killed = staging_folder(folder, settings_hash("cams", cfg))
    folder.rename(killed)
    (killed / MANIFEST).unlink()
    (killed / STARTED).write_text('{"hash": "%s"}' % manifest["hash"])
    lost = ["train_00003", "train_00040", "val_00007"]
    for image_id in lost:
        (killed / f"{image_id}.npz").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in killed.glob("*.npz")}
    resumed = execute("cams", cfg)
    assert not killed.exists()
    assert resumed["hash"] == manifest["hash"]
    assert resumed["metrics"]["written_now"] == 3 and resumed["metrics"]["images"] == 80
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npz") if p.name in kept} == kept
    for image_id in lost:
        with np.load(folder / f"{image_id}.npz") as new, \
                np.load(run["dir"] / "cams" / f"{image_id}.npz") as old:
            np.testing.assert_array_equal(new["classes"], old["classes"])
            np.testing.assert_allclose(new["cams"].astype(np.float32), old["cams"].astype(np.float32),
                                       atol=2e-3)


def test_teacher_trials_share_the_run_and_are_scored_against_the_masks_at_its_cut(run, tmp_path):
    """bench/teacher.py on the run: the cut is the calibrated high threshold whatever the config's
    teacher margin; the trial at the cut remakes the run's masks from its linked seeds and is the
    reference; every trial's agreement is its predictions' IoU against those val pseudo-masks with
    255 as background, recounted here."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import teacher
    high = calibrated_thresholds(run)["fg_threshold_high"]
    margin = replace(run["cfg"], calibrate=replace(run["cfg"].calibrate, teacher_margin=0.2))
    assert teacher.calibrated_cut(margin) == teacher.calibrated_cut(run["cfg"]) == high
    other = round(high + 0.1 if high + 0.1 < 1 else high - 0.1, 2)
    reference = teacher.reference_masks(margin, tmp_path, high)
    rows = teacher.trials(margin, reference, [high, other], tmp_path)
    own, stricter = (Path(row["run_dir"]) for row in rows)
    assert own == reference
    for path in (run["dir"] / "classifier").rglob("*.pt"):
        assert path.samefile(own / path.relative_to(run["dir"])), path  # linked, not retrained
    for path in sorted((run["dir"] / "pseudo").glob("*.png")):
        assert (own / "pseudo" / path.name).read_bytes() == path.read_bytes()
    assert [row["high"] for row in rows] == [high, other]
    for row, trial in zip(rows, (own, stricter)):
        matrix = np.zeros((256, 256), np.int64)
        for name in run["val"].ids:
            truth = read_mask(run["dir"] / "pseudo" / f"{name}.png").ravel().astype(np.int64)
            truth[truth == 255] = 0
            predicted = read_mask(trial / "eval" / "seg" / "predictions" / f"{name}.png").ravel()
            np.add.at(matrix, (truth, predicted), 1)
        present = (matrix.sum(0) + matrix.sum(1)) > 0
        iou = np.diag(matrix)[present] / (matrix.sum(0) + matrix.sum(1) - np.diag(matrix))[present]
        assert row["agreement"] == pytest.approx(iou.mean(), abs=1e-4)
        assert row["oracle_miou"] == load_manifest(trial / "eval" / "seg")["metrics"]["miou"]
