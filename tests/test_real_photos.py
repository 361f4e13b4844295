"""Photos as users bring them, through every stage on a timm backbone: negatives (photos with no
object, all-background masks), photos of other sizes in both orientations, and photos larger than
`data.max_side`, worked on at a smaller size. Seeds come at each photo's working size, pseudo-masks
and predictions at its own, negatives get all-background pseudo-masks, and the scores count them."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.cam.seeds import load_cams
from pipeline.config import load_config
from pipeline.data.images import read_mask, save_mask
from pipeline.data.shapes import build_shapes
from pipeline.data.voc import VocDataset
from pipeline.metrics import confusion, mean_iou
from pipeline.runs import read_json
from pipeline.stages import execute_all

pytestmark = pytest.mark.slow  # every stage on a small dataset: `make test-fast` leaves it out

NEGATIVES = ["train_00001", "train_00004", "val_00002"]
# id -> (height, width): a landscape and a portrait photo of another size than the rest
RESIZED = {"train_00002": (24, 40), "train_00003": (40, 24), "val_00000": (40, 24), "val_00001": (24, 40),
           "train_00005": (48, 80), "val_00003": (80, 48)}
MAX_SIDE = 40
# the photos larger than MAX_SIDE at their working size: half their size
WORKING = {"train_00005": (24, 40), "val_00003": (40, 24)}


def photos(root):
    """The shapes dataset made into photos of several sizes, some of them negatives."""
    build_shapes(root, seed=3, size=32, n_train=24, n_val=8)
    for image_id in NEGATIVES:
        save_mask(root / "SegmentationClass" / f"{image_id}.png", np.zeros((32, 32), np.uint8))
    for image_id, (height, width) in RESIZED.items():
        image = Image.open(root / "JPEGImages" / f"{image_id}.png").resize((width, height), Image.BILINEAR)
        image.save(root / "JPEGImages" / f"{image_id}.png")
        mask = Image.fromarray(read_mask(root / "SegmentationClass" / f"{image_id}.png"))
        save_mask(root / "SegmentationClass" / f"{image_id}.png",
                  np.asarray(mask.resize((width, height), Image.NEAREST)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("photos")
    photos(tmp / "data")
    cfg = load_config(None, [
        f"run_dir={tmp}/run", "data.name=voc", f"data.root={tmp}/data", f"data.max_side={MAX_SIDE}", "seed=0",
        "cls.arch=test_efficientnet", "cls.split=train", "cls.crop_size=32", "cls.epochs=2",
        "cls.batch_size=8", "cls.backbone_lr_scale=0.1", "cam.method=gradcam", "cam.layers=[blocks.3,bn2]",
        "cam.flip=true", "cam.batch_size=8",
        "eval.compare_images=4", "eval.compare_methods=[cam,gradcam]", "eval.compare_layer_sets=[[bn2]]",
        "pseudo.workers=1", "pseudo.splits=[train,val]", "pseudo.peak_quantile=1.0",
        "seg.crop_size=32", "seg.epochs=1", "seg.batch_size=8",
        "seg.eval_flip=true", "seg.eval_crf=true", "report.examples=2", "affinity.enabled=true",
        "affinity.epochs=1", "affinity.batch_size=8", "affinity.crop_size=32", "affinity.train_radius=3",
        "affinity.exp_times=1"])
    manifests = execute_all(cfg)
    return {"tmp": tmp, "dir": tmp / "run", "manifests": manifests, "cfg": cfg,
            "train": VocDataset(tmp / "data", "train"), "val": VocDataset(tmp / "data", "val")}


def test_every_stage_ran_with_negatives_in_both_splits(run):
    assert run["train"].label_matrix()[[1, 4]].sum() == 0
    assert {"train-cls", "cams", "pseudo", "train-seg", "eval-seg", "report"} <= set(run["manifests"])
    assert read_json(run["dir"] / "report" / "summary.json")["cls_map"] is not None


def working_shape(image_id):
    return WORKING.get(image_id, RESIZED.get(image_id, (32, 32)))


def test_seeds_come_at_each_photos_working_size_and_negatives_have_none(run):
    for voc in (run["train"], run["val"]):
        for image_id in voc.ids:
            cams, classes = load_cams(run["dir"] / "cams" / f"{image_id}.npz", run["cfg"].cam)
            assert cams.shape == (len(voc.labels(image_id)), *working_shape(image_id))
            assert classes.tolist() == voc.labels(image_id).tolist()
    assert load_cams(run["dir"] / "cams" / "train_00001.npz", run["cfg"].cam)[0].shape == (0, 32, 32)


def test_pseudo_masks_and_predictions_at_each_photos_size_negatives_all_background(run):
    for voc in (run["train"], run["val"]):
        for image_id in voc.ids:
            pseudo = read_mask(run["dir"] / "pseudo" / f"{image_id}.png")
            assert pseudo.shape == RESIZED.get(image_id, (32, 32))
            if image_id in NEGATIVES:
                assert not pseudo.any()
            else:
                assert set(np.unique(pseudo)) <= {0, 255, *(voc.labels(image_id) + 1)}
    for image_id in run["val"].ids:
        predicted = read_mask(run["dir"] / "eval" / "seg" / "predictions" / f"{image_id}.png")
        assert predicted.shape == RESIZED.get(image_id, (32, 32))


def at_working_size(mask, image_id):
    height, width = working_shape(image_id)
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))


def test_scores_count_the_negatives_at_the_working_size(run):
    """The val pseudo-masks' mIoU (255 as background) recomputed from the files, negatives in, the
    masks of the photos larger than data.max_side brought to their working size."""
    val = run["val"]
    n = val.num_classes + 1
    total = np.zeros((n, n), np.int64)
    negatives_background = 0
    for image_id in val.ids:
        gt = at_working_size(read_mask(val.mask_path(image_id)), image_id)
        pseudo = at_working_size(read_mask(run["dir"] / "pseudo" / f"{image_id}.png"), image_id)
        pseudo = np.where(pseudo == 255, 0, pseudo)
        keep = gt != 255
        total += confusion(gt[keep], pseudo[keep], n)
        if image_id in NEGATIVES:
            negatives_background += int(keep.sum())
    reported = read_json(run["dir"] / "eval" / "pseudo" / "results.json")
    assert negatives_background > 0
    assert reported["val"]["miou"] == pytest.approx(mean_iou(total), abs=1e-4)
