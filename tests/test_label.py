"""The label command on folders of odd images, and folders with a labels CSV as a training dataset.

One tiny classifier (shapes, 32 px, a few seconds) serves every test; expected classes and scores
are recomputed here from that classifier, so the tests do not depend on how well it learnt.
"""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import distributed
from pipeline.cam.seeds import seed_batch
from pipeline.cli import main, parse
from pipeline.config import load_config
from pipeline.data import open_split
from pipeline.data.folder import FolderDataset, read_labels_csv
from pipeline.data.images import IGNORE, PALETTE, DataError, read_image, read_mask
from pipeline.data.shapes import SHAPES, shapes_scene
from pipeline.data.transforms import normalised_batch
from pipeline.data.voc import VocDataset
from pipeline.label import labelling_size, run_config
from pipeline.models.checkpoints import load_classifier, load_segmenter
from pipeline.models.segmenter import predict_probs
from pipeline.refine.calibration import with_choices
from pipeline.refine.masks import pseudo_mask
from pipeline.runs import StageError, read_json
from pipeline.stages import execute, execute_all, run_outputs

COLOURS = np.array(PALETTE, np.uint8).reshape(256, 3)
# name, mode, (height, width): every mode the label command must read, each at its own size.
ODD = [("rgb.png", "RGB", (32, 32)), ("grey.png", "L", (40, 36)), ("rgba.png", "RGBA", (48, 32)),
       ("deep.png", "I;16", (36, 44)), ("palette.png", "P", (32, 40)), ("photo.jpg", "RGB", (34, 34))]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("label-run")
    torch.manual_seed(0)
    overrides = ["data.name=shapes", f"data.root={tmp}/data", "data.image_size=32", "data.n_train=48",
                 "data.n_val=16", "cls.split=train", "cls.crop_size=32", "cls.epochs=3",
                 "cls.batch_size=16", "cam.layers=[layer3,layer4]", "pseudo.workers=1"]
    cfg = load_config(None, [f"run_dir={tmp}/run", *overrides])
    execute("data", cfg)
    execute("train-cls", cfg)
    model, _ = load_classifier(tmp / "run" / "classifier" / "model.pt")
    return {"dir": tmp / "run", "data": tmp / "data", "model": model, "cfg": cfg, "overrides": overrides}


def save_in_mode(image: np.ndarray, mode: str, path) -> None:
    if mode == "I;16":
        grey = np.asarray(Image.fromarray(image).convert("L"), np.uint16)
        Image.fromarray(grey * 257).save(path)  # Pillow picks mode I;16
    elif mode == "P":
        Image.fromarray(image).quantize(32).save(path)
    else:
        Image.fromarray(image).convert(mode).save(path)


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    """Shapes scenes resized to different sizes, one per mode; returns (folder, {name: class names})."""
    folder = tmp_path_factory.mktemp("odd")
    truth = {}
    for index, (name, mode, (height, width)) in enumerate(ODD):
        image, labels = shapes_scene(np.random.default_rng([7, index]), 48)
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.NEAREST))
        labels = np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))
        save_in_mode(image, mode, folder / name)
        truth[name] = [SHAPES[c - 1] for c in np.unique(labels) if c > 0]
    (folder / "notes.txt").write_text("not an image: the label command leaves it alone\n")
    return folder, truth


def label(run, images, out, *extra):
    return main(["label", "--images", str(images), "--run", str(run["dir"]), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def predicted(run, odd_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("predicted") / "out"
    code = label(run, odd_folder[0], out)
    return {"code": code, "out": out, "summary": read_json(out / "summary.json")}


def scores_of(model, image):
    with torch.inference_mode():
        return torch.sigmoid(model(normalised_batch([image])))[0].numpy()


def check_outputs(out, folder, name, classes):
    """Mask and overlay of one image: its size, only its classes, colours blended where not background."""
    image = read_image(folder / name)
    stem = name.rsplit(".", 1)[0]
    mask = read_mask(out / "masks" / f"{stem}.png")
    assert mask.shape == image.shape[:2]
    assert set(np.unique(mask).tolist()) <= {0, IGNORE, *(SHAPES.index(c) + 1 for c in classes)}
    overlay = np.asarray(Image.open(out / "overlays" / f"{stem}.png"))
    assert overlay.shape == image.shape
    shown = mask != 0
    np.testing.assert_array_equal(overlay[~shown], image[~shown])
    blended = np.rint(0.5 * image + 0.5 * COLOURS[mask]).astype(np.uint8)
    np.testing.assert_array_equal(overlay[shown], blended[shown])
    return mask


def test_label_without_csv_uses_the_classifiers_scores(run, odd_folder, predicted):
    folder = odd_folder[0]
    out, summary = predicted["out"], predicted["summary"]
    assert predicted["code"] == 0
    assert summary["images"] == summary["written"] == summary["written_now"] == len(ODD)
    assert summary["failed"] == [] and summary["score_threshold"] == 0.5
    for name, _, _ in ODD:
        record = summary["per_image"][name]
        scores = scores_of(run["model"], read_image(folder / name))
        assert record["labels_from"] == "classifier"
        assert record["classes"] == [c for c, s in zip(SHAPES, scores) if s > 0.5]
        assert record["scores"] == pytest.approx(dict(zip(SHAPES, scores.tolist())), abs=1e-4)
        mask = check_outputs(out, folder, name, record["classes"])
        assert record["confident_fraction"] == round(float((mask != IGNORE).mean()), 4)
    assert summary["no_class"] == [n for n, _, _ in ODD if not summary["per_image"][n]["classes"]]
    assert summary["class_counts"] == {c: sum(c in r["classes"] for r in summary["per_image"].values())
                                       for c in SHAPES}


def test_labels_csv_lists_every_image_in_folder_order(predicted):
    lines = (predicted["out"] / "labels.csv").read_text().splitlines()
    assert lines[0] == "image,labels,confident_fraction"
    records = predicted["summary"]["per_image"]
    expected = sorted(name for name, _, _ in ODD)
    assert [line.split(",")[0] for line in lines[1:]] == expected
    for line, name in zip(lines[1:], expected):
        assert line == f"{name},{';'.join(records[name]['classes'])},{records[name]['confident_fraction']}"


def test_label_with_csv_uses_its_classes(run, odd_folder, tmp_path):
    folder, truth = odd_folder
    # One row names its image without the suffix, as a CSV may.
    rows = [f"{'rgb' if name == 'rgb.png' else name},{';'.join(truth[name])}" for name, _, _ in ODD]
    (tmp_path / "labels.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert label(run, folder, out, "--labels", str(tmp_path / "labels.csv")) == 0
    summary = read_json(out / "summary.json")
    assert summary["written"] == len(ODD) and summary["failed"] == [] and summary["no_class"] == []
    cfg = with_choices(run["cfg"], None)  # a run without calibration labels at its fixed thresholds
    assert summary["mask_thresholds"] == {"high": cfg.pseudo.fg_threshold_high, "low": cfg.pseudo.fg_threshold_low}
    for name, _, _ in ODD:
        record = summary["per_image"][name]
        assert record["labels_from"] == "csv" and record["classes"] == truth[name]
        mask = check_outputs(out, folder, name, truth[name])
        # The run's own seeds and pseudo-mask settings, as the cams and pseudo stages use them.
        image, classes = read_image(folder / name), np.array([SHAPES.index(c) for c in truth[name]])
        seeds = seed_batch(run["model"], [image], [classes], cfg)[0]
        np.testing.assert_array_equal(mask, pseudo_mask(cfg.pseudo, image, seeds, classes))


def test_label_from_the_segmenter_restricts_its_softmax_to_the_images_classes(run, odd_folder, tmp_path):
    """With label.masks_from=segmenter the masks are the second round's: the run's segmenter,
    flip-averaged, restricted to the CSV's classes, then the pseudo-mask rule on its class maps."""
    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy)
    seg = ["seg.crop_size=32", "seg.epochs=1", "seg.batch_size=8", "round2.enabled=false"]
    cfg = load_config(None, [f"run_dir={copy}", *run["overrides"], *seg])
    for stage in ("cams", "calibrate", "pseudo", "train-seg"):
        execute(stage, cfg)
    folder, truth = odd_folder
    rows = [f"{name},{';'.join(truth[name])}" for name, _, _ in ODD]
    (tmp_path / "labels.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["label", "--images", str(folder), "--run", str(copy), "--out", str(out), "--labels",
                 str(tmp_path / "labels.csv"), "label.masks_from=segmenter", "round2.enabled=false"]) == 0
    segmenter, _ = load_segmenter(copy / "segmenter" / "model.pt")
    calibrated = with_choices(cfg, copy / "calibrate" / "choices.json")  # what the run's masks used
    for name, _, _ in ODD:
        mask = check_outputs(out, folder, name, truth[name])
        image, classes = read_image(folder / name), np.array([SHAPES.index(c) for c in truth[name]])
        batch = normalised_batch([image])
        probs = ((predict_probs(segmenter, batch) + predict_probs(segmenter, batch.flip(-1)).flip(-1)) / 2)[0]
        known = probs.numpy()[[0, *(classes + 1)]]
        known = known / known.sum(0)
        expected = pseudo_mask(calibrated.pseudo, image, np.ascontiguousarray(known[1:], np.float32), classes)
        np.testing.assert_array_equal(mask, expected)


def test_label_from_a_segmenter_the_run_lacks_is_one_line(run, odd_folder, tmp_path, capsys):
    code = label(run, odd_folder[0], tmp_path / "out", "label.masks_from=segmenter")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "segmenter/model.pt: no trained segmenter in this run" in err[0], err
    assert not (tmp_path / "out" / "masks").exists()


@pytest.mark.parametrize("working_size", ["label.max_side=50", "data.max_side=50"])
def test_a_large_image_is_labelled_at_the_working_size_and_written_at_its_own(run, tmp_path, working_size):
    folder = tmp_path / "big"
    folder.mkdir()
    image, labels = shapes_scene(np.random.default_rng(11), 48)
    big = np.asarray(Image.fromarray(image).resize((150, 120), Image.NEAREST))
    Image.fromarray(big).save(folder / "big.png")
    classes = [SHAPES[c - 1] for c in np.unique(labels) if c > 0]
    (tmp_path / "labels.csv").write_text(f"big.png,{';'.join(classes)}\n")
    out = tmp_path / "out"
    assert label(run, folder, out, "--labels", str(tmp_path / "labels.csv"), working_size) == 0
    mask = check_outputs(out, folder, "big.png", classes)  # the photo's own 150 x 120
    # what the run's seeds and pseudo-mask settings give at 50 x 40, upsampled by nearest
    small = np.asarray(Image.fromarray(big).resize((50, 40), Image.BILINEAR))
    ids = np.array([SHAPES.index(c) for c in classes])
    seeds = seed_batch(run["model"], [small], [ids], run["cfg"])[0]
    expected = Image.fromarray(pseudo_mask(with_choices(run["cfg"], None).pseudo, small, seeds, ids)).resize((150, 120),
                                                                                       Image.NEAREST)
    np.testing.assert_array_equal(mask, np.asarray(expected))


def test_corrupt_files_are_reported_skipped_and_retried(run, odd_folder, tmp_path, caplog):
    folder = tmp_path / "images"
    shutil.copytree(odd_folder[0], folder)
    (folder / "broken.png").write_bytes(b"not a png at all")
    jpeg = (folder / "photo.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    out = tmp_path / "out"
    assert label(run, folder, out) == 1
    summary = read_json(out / "summary.json")
    assert [f["image"] for f in summary["failed"]] == ["broken.png", "cut.jpg"]
    assert all(str(folder / f["image"]) in f["error"] for f in summary["failed"])
    assert "broken.png" in caplog.text and "cut.jpg" in caplog.text
    assert summary["images"] == len(ODD) + 2 and summary["written"] == len(ODD)
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(
        n.rsplit(".", 1)[0] + ".png" for n, _, _ in ODD)
    # A rerun redoes only what is missing: the two bad files again, and one lost record.
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    (out / "records" / "grey.json").unlink()
    assert label(run, folder, out) == 1
    again = read_json(out / "summary.json")
    assert again["written_now"] == 1 and again["written"] == len(ODD) and len(again["failed"]) == 2
    now = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    del now["grey.png"], kept["grey.png"]
    assert now == kept
    assert again["per_image"]["grey.png"] == summary["per_image"]["grey.png"]


def test_no_class_above_threshold_gives_background_and_is_listed(run, odd_folder, tmp_path, capsys):
    folder = odd_folder[0]
    out = tmp_path / "out"
    assert label(run, folder, out, "label.score_threshold=1.0") == 0  # no sigmoid score exceeds it
    summary = read_json(out / "summary.json")
    assert summary["no_class"] == sorted(name for name, _, _ in ODD)
    for name, _, _ in ODD:
        mask = check_outputs(out, folder, name, [])
        assert not mask.any() and summary["per_image"][name]["confident_fraction"] == 1.0
    # Other settings in the same folder would mix two kinds of masks: refused in one line.
    capsys.readouterr()
    assert label(run, folder, out, "label.score_threshold=0.9") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "other settings" in err


def test_bad_labels_csv_is_one_line_naming_file_and_line(run, odd_folder, tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("rgb.png,square\ngrey.png,disc;triangle\n")
    assert label(run, odd_folder[0], tmp_path / "out", "--labels", str(tmp_path / "labels.csv")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {tmp_path / 'labels.csv'}:2: unknown class 'triangle' "
                   f"(classes: square, disc, cross)")
    assert not (tmp_path / "out").exists()


def _manifests(run_dir):
    return {path.relative_to(run_dir): path.read_bytes() for path in run_dir.rglob("manifest.json")}


def test_label_takes_the_settings_the_runs_seeds_were_made_with(run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(run["dir"], run_dir)
    # Before any cams stage: the settings the classifier was trained in (its checkpoint's)
    assert run_config(run_outputs(run_dir), []).cam.layers == ["layer3", "layer4"]
    cfg = load_config(None, [*run["overrides"], f"run_dir={run_dir}", "cam.layers=[layer4]",
                             "cam.splits=[val]", "pseudo.fg_threshold_high=0.4"])
    execute("cams", cfg)
    settled = _manifests(run_dir)
    # A command that fails, and one that fails inside its stage, change no finished stage's files
    assert main(["compare-cams", *[f"{o}" for o in run["overrides"]], f"run_dir={run_dir}",
                 "cam.layers=[layer9]"]) == 2
    assert main(["train-seg", *run["overrides"], f"run_dir={run_dir}"]) == 2  # no pseudo stage yet
    capsys.readouterr()
    assert _manifests(run_dir) == settled and not (run_dir / "config.yaml").exists()
    labelled = run_config(run_outputs(run_dir), ["pseudo.workers=1"])
    assert labelled.cam.layers == ["layer4"]  # the cams manifest's, not the classifier's
    # no pseudo stage ran: its settings are the classifier's, not the cams command's
    assert labelled.pseudo.fg_threshold_high == run["cfg"].pseudo.fg_threshold_high != 0.4
    assert labelled.pseudo.workers == 1 and labelled.run_dir == str(run_dir)


def test_label_takes_round_two_from_a_run_that_trained_it_after_its_classifier(run, tmp_path):
    """A classifier trained with round 2 off records it off; once the run has trained a second
    segmenter, label's masks come from it, predicted as pseudo-r2 recorded (unmirrored here),
    unless an override says otherwise."""
    run_dir = tmp_path / "run"
    shutil.copytree(run["dir"], run_dir)
    assert run_config(run_outputs(run_dir), []).round2.enabled is False
    for folder, config in (("pseudo-r2", {"round2": {"flip": False}}), ("segmenter-r2", {})):
        (run_dir / folder).mkdir()
        (run_dir / folder / "manifest.json").write_text(json.dumps({"config": config}))
    labelled = run_config(run_outputs(run_dir), [])
    assert (labelled.round2.enabled, labelled.round2.flip) == (True, False)
    assert run_config(run_outputs(run_dir), ["round2.enabled=false"]).round2.enabled is False


def test_label_needs_images_run_and_out():
    with pytest.raises(SystemExit):
        parse(["label", "--images", "x", "--run", "r"])
    args = parse(["label", "--images", "x", "--run", "r", "--out", "o", "pseudo.workers=1"])
    assert (str(args.images), str(args.run), str(args.out), args.labels) == ("x", "r", "o", None)
    assert args.overrides == ["pseudo.workers=1"]


# Folder datasets --------------------------------------------------------------------------------


@pytest.fixture
def folder_root(tmp_path):
    """Eight shapes images (one in a sub-folder, one listed without its suffix) with classes.txt and
    a labels CSV with a header."""
    root = tmp_path / "folder"
    (root / "more").mkdir(parents=True)
    rows = []
    for index in range(8):
        image, labels = shapes_scene(np.random.default_rng([3, index]), 32)
        name = f"more/img{index}.png" if index == 0 else f"img{index}.jpg"
        Image.fromarray(image).save(root / name)
        rows.append((name, [SHAPES[c - 1] for c in np.unique(labels) if c > 0]))
    (root / "classes.txt").write_text("background\n" + "\n".join(SHAPES) + "\n")
    rows_text = [f"{'img1' if name == 'img1.jpg' else name},{';'.join(classes)}" for name, classes in rows]
    # With the byte-order mark spreadsheets write before the header.
    (root / "labels.csv").write_text("\ufeff" + "\n".join(["image,labels", *rows_text]) + "\n")
    return root, rows


def test_folder_dataset_reads_images_and_labels(folder_root):
    root, rows = folder_root
    everything = FolderDataset(root, "all")
    assert everything.ids == ["more/img0", *(f"img{i}" for i in range(1, 8))]
    assert everything.class_names == SHAPES and everything.num_classes == 3
    for image_id, (name, classes) in zip(everything.ids, rows):
        assert everything.image_path(image_id) == root / name
        assert [SHAPES[c] for c in everything.labels(image_id)] == classes
        assert everything.image(image_id).shape == (32, 32, 3)
    matrix = everything.label_matrix()
    assert matrix.shape == (8, 3)
    assert matrix.tolist() == [[float(s in c) for s in SHAPES] for _, c in rows]
    for method in (everything.mask, everything.mask_path):  # the stage stops, not skips the image
        with pytest.raises(StageError, match="image-level labels only, no masks to score"):
            method("img1")
    assert everything.image_shape("img1") == (32, 32)


def test_folder_splits_partition_by_id_not_row_order(folder_root):
    root, _ = folder_root
    train = FolderDataset(root, "train", val_fraction=0.25)
    val = FolderDataset(root, "val", val_fraction=0.25)
    assert len(val) == math.ceil(0.25 * 8) == 2 and len(train) == 6
    assert sorted(train.ids + val.ids) == sorted(FolderDataset(root, "all").ids)
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "reversed.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    reordered = FolderDataset(root, "val", root / "reversed.csv", val_fraction=0.25)
    assert sorted(reordered.ids) == sorted(val.ids)
    assert FolderDataset(root, "val", val_fraction=0.25, seed=1).ids != val.ids
    with pytest.raises(DataError, match="splits train, val, all, not 'train_aug'"):
        FolderDataset(root, "train_aug")


@pytest.mark.parametrize("row, problem", [
    ("img1.jpg,square;hexagon", "unknown class 'hexagon' (classes: square, disc, cross)"),
    ("img9.jpg,square", "image 'img9.jpg' not found in "),
    ("img2,disc", "image 'img2' is listed twice"),
    ("just-one-column", "expected 'image,labels'"),
])
def test_folder_dataset_errors_name_file_and_line(folder_root, row, problem):
    root, _ = folder_root
    csv = root / "bad.csv"
    csv.write_text(f"img2.jpg,disc\n{row}\n")  # no header this time
    with pytest.raises(DataError) as error:
        read_labels_csv(csv, root, SHAPES)
    assert str(error.value).startswith(f"{csv}:2: {problem}")
    assert len(str(error.value).splitlines()) == 1


def test_a_row_with_no_labels_is_a_negative(folder_root):
    root, _ = folder_root
    csv = root / "negatives.csv"
    csv.write_text("image,labels\nimg2.jpg,disc\nimg1.jpg, ; \n")
    rows = {row.id: row.classes.tolist() for row in read_labels_csv(csv, root, SHAPES)}
    assert rows == {"img2": [1], "img1": []}


def shapes_folder_config(run, tmp_path, *extra):
    """A config reading the first 32 shapes images as a folder + labels CSV (no masks)."""
    voc = VocDataset(run["data"], "train")
    rows = [f"JPEGImages/{i}.png,{';'.join(SHAPES[c] for c in voc.labels(i))}" for i in voc.ids[:32]]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return load_config(None, [
        f"run_dir={tmp_path}/run", "data.name=folder", f"data.root={run['data']}",
        f"data.labels_csv={tmp_path}/labels.csv", "data.val_fraction=0.25", "cls.split=train",
        "cls.crop_size=32", "cls.epochs=1", "cls.batch_size=16", *extra])


def test_train_cls_on_a_folder_dataset(run, tmp_path):
    """The shapes images as a folder + labels CSV: open_split dispatches, the data stage reads it
    in place, train-cls trains on it."""
    voc = VocDataset(run["data"], "train")
    cfg = shapes_folder_config(run, tmp_path)
    train = open_split(cfg.data, "train")
    assert isinstance(train, FolderDataset) and len(train) == 24
    assert train.class_names == SHAPES  # from the folder's classes.txt
    np.testing.assert_array_equal(train.labels(train.ids[0]), voc.labels(train.ids[0].split("/")[1]))
    data = execute("data", cfg)["metrics"]  # a folder dataset is read in place, not built
    assert data["name"] == "folder" and data["sizes"] == {"train": 24, "val": 8}
    metrics = execute("train-cls", cfg)["metrics"]
    assert metrics["label_prior"] == [round(float(x), 4) for x in train.label_matrix().mean(0)]
    _, state = load_classifier(tmp_path / "run" / "classifier" / "model.pt")
    assert state["class_names"] == SHAPES


@pytest.mark.slow
def test_all_on_a_folder_dataset_runs_the_stages_that_need_no_masks(run, tmp_path, caplog):
    """`all` (and `make`) on images with labels only: the seeds, pseudo-masks and both rounds'
    segmenters, none of the stages that score, no upper bound and no report."""
    cfg = shapes_folder_config(run, tmp_path, "cam.layers=[layer3,layer4]", "pseudo.workers=1",
                               "seg.crop_size=32", "seg.epochs=1", "seg.batch_size=8", "round2.enabled=true")
    with caplog.at_level("INFO", logger="pipeline"):
        manifests = execute_all(cfg)
    assert list(manifests) == ["data", "train-cls", "cams", "calibrate", "pseudo", "train-seg", "pseudo-r2", "train-seg-r2"]
    assert "leaves out the stages that read them (eval-cams, compare-cams, eval-pseudo, eval-calibration, " \
           "eval-seg, eval-pseudo-r2, eval-seg-r2, train-seg-gt, eval-seg-gt, report)" in caplog.text
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "calibrate", "cams", "classifier", "data", "pseudo", "pseudo-r2", "segmenter", "segmenter-r2"]
    train = open_split(cfg.data, "train")
    for image_id in train.ids:
        for folder in ("pseudo", "pseudo-r2"):  # each mask keeps to its image's listed classes
            mask = read_mask(run_dir / folder / f"{image_id}.png")
            allowed = {0, IGNORE, *(int(c) + 1 for c in train.labels(image_id))}
            assert mask.shape == (32, 32) and set(np.unique(mask).tolist()) <= allowed
    with pytest.raises(StageError, match="image-level labels only, no masks to score"):
        execute("eval-pseudo", cfg)


def test_shards_of_two_ranks_write_the_files_of_one_process(run, odd_folder, predicted, tmp_path, monkeypatch):
    """Ranks 0 and 1 of 2, run in turn as torchrun would run them side by side: together they
    write every file the one-process run wrote, byte for byte, and rank 0's summary lists all."""
    out = tmp_path / "sharded"
    for rank in (1, 0):  # rank 0 last: it writes the summary once every rank's records exist
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        assert label(run, odd_folder[0], out) == 0
    single = predicted["out"]
    for kind in ("masks", "overlays", "records"):
        names = sorted(p.name for p in (single / kind).iterdir())
        assert len(names) == len(ODD) and sorted(p.name for p in (out / kind).iterdir()) == names
        for name in names:
            assert (out / kind / name).read_bytes() == (single / kind / name).read_bytes(), (kind, name)
    assert (out / "labels.csv").read_text() == (single / "labels.csv").read_text()
    summary = read_json(out / "summary.json")
    assert summary["written"] == len(ODD) and summary["written_now"] == 3  # rank 0's share of 6
    assert summary["per_image"] == predicted["summary"]["per_image"]


def test_overlay_blends_band_by_band_as_in_one_piece():
    from pipeline.label import overlay
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
    mask = rng.choice(np.array([0, 1, 2, 255], np.uint8), (37, 23))
    whole = np.where((mask != 0)[..., None], np.rint(0.5 * image + 0.5 * COLOURS[mask]), image)
    np.testing.assert_array_equal(overlay(image, mask, rows=5), whole.astype(np.uint8))


@pytest.mark.parametrize("overrides, train_size, expected", [
    (["label.max_side=100"], 320, 100),                 # set: as set
    (["data.max_side=320"], 320, 320),                  # the run's working size (the MSRC recipe's)
    (["data.max_side=1024"], 64, 512),                  # at most 8 x the classifier's training size
    (["data.max_side=0"], 64, 512),                     # the run works at full size: that cap alone
])
def test_images_are_labelled_at_the_runs_working_size(overrides, train_size, expected):
    assert labelling_size(load_config(None, overrides), {"train_size": train_size}) == expected

