"""The explain command and API on real photos (scikit-image's) with torchvision ResNets of random
weights: maps against the engine, the overlay against the raw map, the files it writes, and bad
input. Images run at 64 px and grids have few rows, so the whole file takes seconds."""
from __future__ import annotations

import html.parser
import os
import sys
import types
from pathlib import Path
from urllib.parse import unquote, urlparse

import matplotlib
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data
from torch import nn
from torch.nn import functional as F

from pipeline.cam import compute_method_cams, fuse_layers
from pipeline.cli import main
from pipeline.data.images import read_image
from pipeline.explain import explain, inspect_model, overlay_figure, preprocess
from pipeline.explain.figures import ALPHA_COLD, ALPHA_HOT, COLOUR_MAP, display_image
from pipeline.explain.models import torchvision_classifier
from pipeline.explain.ranking import MODULE, FaithfulnessTotals, faithfulness_scores
from pipeline.models.classifier import build_classifier
from pipeline.runs import read_json

SIZE = 64


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """scikit-image's photos as files, in the modes a user's folder holds: RGB JPEG and PNG,
    grey, RGBA, and a 16-bit grey PNG given as a file of its own."""
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.chelsea()).save(folder / "chelsea.jpg")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(data.coffee()).convert("RGBA").save(folder / "coffee-rgba.png")
    Image.fromarray(data.camera()).save(folder / "camera-grey.png")
    (folder / "notes.txt").write_text("not an image: left alone\n")
    deep = folder.parent / "deep" / "rocket-16bit.png"
    deep.parent.mkdir()
    grey = np.asarray(Image.fromarray(data.rocket()).convert("L"), np.uint16)
    Image.fromarray(grey * 257).save(deep)
    return folder, deep


def explain_cli(*args) -> int:
    return main(["explain", *map(str, args)])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


# ----------------------------------------------------------------------------- the model's anatomy

def test_default_layers_are_the_last_block_of_each_stage(resnet18):
    anatomy = inspect_model(resnet18, (SIZE, SIZE))
    assert anatomy.stages == ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert anatomy.head == "fc" and "layer4.1" in anatomy.gap_layers and "layer3.1" not in anatomy.gap_layers
    assert inspect_model(torchvision.models.resnet50().eval(), (SIZE, SIZE)).stages == [
        "layer1.2", "layer2.3", "layer3.5", "layer4.2"]


class NoPoolingNet(nn.Module):
    """conv stages then a linear layer on the flattened map: no GAP, so no CAM anywhere."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def test_cam_only_where_a_linear_head_reads_the_average_pool():
    model = NoPoolingNet().eval()
    images = torch.randn(2, 3, 16, 16)
    anatomy = inspect_model(model, (16, 16))
    assert anatomy.stages == ["features.1", "features.3"] and anatomy.gap_layers == []
    result = explain(model, images, top_k=2)
    assert "cam" not in result.methods and result.methods[0] == "gradcam"
    with pytest.raises(ValueError, match="'cam' needs .* linear head"):
        explain(model, images, methods=["cam"])


# ----------------------------------------------------------------------------- maps

def test_explain_gives_the_engines_maps_for_the_top_classes(resnet18):
    images = preprocess([data.chelsea(), data.astronaut(), data.coffee()], SIZE)
    result = explain(resnet18, images, top_k=2, batch_size=2)
    logits = resnet18(images).detach()
    classes = logits.topk(2, dim=1).indices
    assert torch.equal(result.classes, classes)
    assert torch.allclose(result.scores, logits.softmax(1).gather(1, classes), atol=1e-6)
    assert result.layers == ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert list(result.maps["cam"]) == ["layer4.1"]
    direct = compute_method_cams(resnet18, images, result.layers, result.methods[1:], classes)
    direct["cam"] = compute_method_cams(resnet18, images, ["layer4.1"], ["cam"], classes)["cam"]
    for method in result.methods:
        for layer, maps in direct[method].items():
            assert torch.allclose(result.maps[method][layer], maps, rtol=1e-4, atol=1e-7), (method, layer)
        assert torch.allclose(result.fused[method], fuse_layers(direct[method], (SIZE, SIZE)), atol=1e-5)
    assert result.fused["gradcam"].shape == (3, 2, SIZE, SIZE)
    assert result.maps["gradcam"]["layer1.1"].shape == (3, 2, 16, 16)


def test_one_forward_and_one_backward_per_batch_for_every_method_layer_and_class(resnet18, monkeypatch):
    images = preprocess([data.chelsea()] * 4, SIZE)
    forwards, backwards = [], []
    handle = resnet18.register_forward_hook(lambda *_: forwards.append(1))
    original = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: backwards.append(1) or original(*a, **k))
    try:
        result = explain(resnet18, images, layers=["layer2.1", "layer3.1", "layer4.1"],
                         heads={"layer4.1": resnet18.fc}, top_k=3, batch_size=2)
    finally:
        handle.remove()
    assert len(result.methods) == 6 and forwards == [1, 1] and backwards == [1, 1]


def test_named_classes_and_a_callable_target(resnet18):
    images = preprocess([data.chelsea(), data.coffee()], SIZE)
    names = [f"name {i}" for i in range(1000)]
    result = explain(resnet18, images, classes=["Name 3", 5], class_names=names, methods=["gradcam"])
    assert result.classes.tolist() == [[3, 5], [3, 5]] and result.target_name(1, 0) == "name 3 (3)"
    with pytest.raises(ValueError, match="unknown class 'nope'"):
        explain(resnet18, images, classes=["nope"], class_names=names)
    reference = torch.randn(1000)

    def similarity(logits):  # one target: cosine similarity of the output to a reference embedding
        return F.cosine_similarity(logits, reference[None], dim=1)[:, None]

    result = explain(resnet18, images, target=similarity, layers=["layer4.1"])
    assert result.classes is None and "cam" not in result.methods and result.target_name(0, 0) == "target 0"
    assert torch.allclose(result.scores, similarity(resnet18(images)).detach(), atol=1e-6)
    assert result.maps["gradcam"]["layer4.1"].shape == (2, 1, 2, 2)


def recovered_heat(overlay: np.ndarray, picture: np.ndarray) -> np.ndarray:
    """Invert the blend pixel by pixel: the heat level whose colour, blended over the picture at
    its opacity, comes nearest to the overlay's pixel."""
    levels = np.linspace(0, 1, 256, dtype=np.float32)
    colours = matplotlib.colormaps[COLOUR_MAP](levels)[:, :3].astype(np.float32)
    alpha = ALPHA_COLD + (ALPHA_HOT - ALPHA_COLD) * levels
    base, seen = picture.astype(np.float32) / 255, overlay.astype(np.float32) / 255
    heat = np.empty(overlay.shape[:2], np.float32)
    for top in range(0, overlay.shape[0], 16):
        candidates = (1 - alpha[:, None]) * base[top:top + 16, :, None, :] + (alpha[:, None] * colours)
        error = ((candidates - seen[top:top + 16, :, None, :]) ** 2).sum(-1)
        heat[top:top + 16] = levels[error.argmin(-1)]
    return heat


def test_an_overlays_hottest_pixel_is_where_the_raw_map_peaks(resnet18):
    """Taken from the figure's own panel; the heat is read back from its blended pixels and the
    peak recomputed from the raw map, so neither comes from the code that drew it."""
    photo = data.chelsea()  # 451 x 300: a mixed-up or transposed aspect would show
    result = explain(resnet18, preprocess([photo], SIZE), layers=["layer2.1", "layer3.1"],
                     methods=["gradcam"], top_k=1)
    fig = overlay_figure(photo, result)
    panel = next(ax for ax in fig.axes
                 if ax.get_ylabel() == "gradcam" and ax.get_title().startswith("layer2.1"))
    overlay = np.asarray(panel.get_images()[0].get_array())
    height, width = overlay.shape[:2]
    assert abs(width / height - photo.shape[1] / photo.shape[0]) < 0.02 and max(height, width) == 256
    raw = result.maps["gradcam"]["layer2.1"][0, 0]  # 8 x 8
    expected = F.interpolate((raw / raw.max())[None, None], size=(height, width), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    assert expected.min() < 0.3  # a map with contrast, so a wrong placement cannot pass
    heat = recovered_heat(overlay, display_image(photo))
    assert np.corrcoef(heat.ravel(), expected.ravel())[0, 1] > 0.99
    peak = np.unravel_index(expected.argmax(), expected.shape)
    hottest = np.unravel_index(heat.argmax(), heat.shape)
    assert expected[hottest] > expected.max() - 3 / 255
    assert np.hypot(*np.subtract(peak, hottest)) < 0.05 * width
    # the check discriminates: the same map drawn upside down or mirrored would fail it
    for wrong in (expected[::-1], expected[:, ::-1]):
        assert np.corrcoef(heat.ravel(), wrong.ravel())[0, 1] < 0.9


# ----------------------------------------------------------------------------- the command

class References(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.found += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture(scope="module")
def explained(photos, tmp_path_factory):
    folder, deep = photos
    out = tmp_path_factory.mktemp("explained")
    torch.manual_seed(0)
    code = explain_cli("--images", folder, deep, "--model", "resnet18", "--out", out, "--size", SIZE,
                       "--top-k", 2, "--methods", "gradcam,cam", "--layers", "layer3.1,layer4.1",
                       "--batch-size", 3)
    return code, out, read_json(out / "summary.json")


def test_the_command_writes_grids_maps_summary_and_page(explained, photos):
    code, out, summary = explained
    assert code == 0 and summary["failed"] == []
    names = ["astronaut.png", "camera-grey.png", "chelsea.jpg", "coffee-rgba.png", "rocket-16bit.png"]
    assert [entry["image"] for entry in summary["per_image"]] == names
    assert summary["model"] == "resnet18" and summary["weights"] == "none" and summary["random_weights"]
    assert summary["layers"] == ["layer3.1", "layer4.1"] and summary["methods"] == ["gradcam", "cam"]
    assert summary["cam_layers"] == ["layer4.1"] and summary["input_size"] == [SIZE, SIZE]
    assert summary["per_image"][2]["size"] == [300, 451]
    grids = sorted(p.name for p in (out / "grids").iterdir())
    assert len(grids) == 10
    assert grids[:2] == [Path(t["grid"]).name for t in summary["per_image"][0]["targets"]]
    assert grids[0].startswith("astronaut.1.") and grids[1].startswith("astronaut.2.")
    with np.load(out / "maps" / "chelsea.npz", allow_pickle=False) as maps:
        assert sorted(maps.files) == sorted([
            "maps.gradcam.layer3.1", "maps.gradcam.layer4.1", "maps.cam.layer4.1", "fused.gradcam",
            "fused.cam", "classes", "scores", "class_names", "layers", "methods"])
        raw = maps["maps.gradcam.layer3.1"]
        assert raw.dtype == np.float16 and raw.shape == (2, 4, 4)
        assert maps["fused.cam"].shape == (2, SIZE, SIZE) and maps["classes"].dtype == np.int64
        chelsea = summary["per_image"][2]
        assert maps["classes"].tolist() == [t["class"] for t in chelsea["targets"]]
        np.testing.assert_allclose(maps["scores"], [t["score"] for t in chelsea["targets"]], atol=1e-4)
    # the raw maps are the API's for the same image and the same (seeded) weights
    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None).eval()
    photo = read_image(photos[0] / "chelsea.jpg")
    again = explain(model, preprocess([photo], SIZE), ["layer3.1", "layer4.1"], ["gradcam", "cam"], 2)
    with np.load(out / "maps" / "chelsea.npz", allow_pickle=False) as maps:
        for key, raw in [("maps.gradcam.layer3.1", again.maps["gradcam"]["layer3.1"][0]),
                         ("maps.cam.layer4.1", again.maps["cam"]["layer4.1"][0]),
                         ("fused.gradcam", again.fused["gradcam"][0])]:
            np.testing.assert_allclose(maps[key].astype(np.float32), raw.numpy(), rtol=2e-3, atol=1e-6)


def test_every_file_the_page_references_exists_and_is_relative(explained):
    _, out, summary = explained
    parser = References()
    parser.feed((out / "index.html").read_text())
    local = [ref for ref in parser.found if not ref.startswith("#")]
    assert len(local) >= 5 * (1 + 2 * 2 + 1)  # per image: picture, 2 grids (image and link), maps
    for ref in local:
        assert not urlparse(ref).scheme and not ref.startswith("/"), ref
        assert (out / unquote(ref)).is_file(), ref
    anchors = {ref[1:] for ref in parser.found if ref.startswith("#")}
    page = (out / "index.html").read_text()
    assert all(f'id="{anchor}"' in page for anchor in anchors)
    assert "random" in page and "Faithfulness" not in page


def test_a_run_classifier_with_its_classes_and_training_size(photos, tmp_path):
    """A camseg run's classifier (a hand-made checkpoint here): sigmoid scores, its class names
    and its training size."""
    torch.manual_seed(0)
    model = build_classifier("resnet18", 3)
    (tmp_path / "run" / "classifier").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "arch": "resnet18", "class_names": ["bag", "boot", "dress"],
                "last_stride": 2, "train_size": SIZE, "config": {"cls": {"crop_size": SIZE}}},
               tmp_path / "run" / "classifier" / "model.pt")
    out = tmp_path / "out"
    assert explain_cli("--images", photos[0] / "chelsea.jpg", "--run", tmp_path / "run", "--out", out,
                       "--top-k", 5, "--methods", "cam") == 0
    summary = read_json(out / "summary.json")
    assert summary["scores"] == "sigmoid" and summary["source"] == "run"
    assert summary["input_size"] == [SIZE, SIZE]
    assert summary["layers"] == ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]  # the stages at 64 px
    assert summary["cam_layers"] == ["layer4.1"]
    grid = Image.open(out / summary["per_image"][0]["targets"][0]["grid"])
    assert grid.width < grid.height * 2.5  # one layer column and the fused one, not four blank columns
    targets = summary["per_image"][0]["targets"]
    assert sorted(t["name"].split(" ")[0] for t in targets) == ["bag", "boot", "dress"]  # top 5 of 3 classes
    logits = model.eval()(preprocess([read_image(photos[0] / "chelsea.jpg")], SIZE)).detach()
    expected = sorted(torch.sigmoid(logits)[0].tolist(), reverse=True)
    assert [t["score"] for t in targets] == pytest.approx(expected, abs=1e-4)


@pytest.fixture
def cached_resnet18(tmp_path, monkeypatch):
    """A random ResNet-18 state dict (head included) where torch's cache keeps IMAGENET1K_V1."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    def offline(*args, **kwargs):
        raise OSError("no network in tests")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    path = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(url)
    path.parent.mkdir(parents=True)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, path)
    return state


def test_weights_by_torchvision_name_bring_imagenets_class_names(cached_resnet18, photos, tmp_path):
    classifier = torchvision_classifier("resnet18", "IMAGENET1K_V1")
    assert torch.equal(classifier.model.fc.weight, cached_resnet18["fc.weight"])  # the head is loaded too
    assert classifier.size == 224 and classifier.scores == "softmax"
    assert classifier.class_names[281] == "tabby"
    out = tmp_path / "out"
    assert explain_cli("--images", photos[0] / "chelsea.jpg", "--model", "resnet18",
                       "--weights", "IMAGENET1K_V1", "--out", out, "--size", SIZE,
                       "--classes", "tabby, tiger cat", "--methods", "gradcam", "--layers", "layer4.1") == 0
    summary = read_json(out / "summary.json")
    assert summary["weights"] == "IMAGENET1K_V1" and not summary["random_weights"]
    assert summary["targets"] == {"classes": ["tabby", "tiger cat"]}
    assert [Path(t["grid"]).name for t in summary["per_image"][0]["targets"]] == [
        "chelsea.1.tabby.png", "chelsea.2.tiger-cat.png"]


# ----------------------------------------------------------------------------- bad input

def test_an_unreadable_image_is_named_skipped_and_exits_1(photos, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    jpeg = (photos[0] / "chelsea.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 3])
    (folder / "good.jpg").write_bytes(jpeg)
    out = tmp_path / "out"
    assert explain_cli("--images", folder, "--model", "resnet18", "--out", out, "--size", SIZE, "--top-k", 1,
                       "--methods", "gradcam", "--layers", "layer4.1") == 1
    summary = read_json(out / "summary.json")
    assert [f["image"] for f in summary["failed"]] == ["broken.png", "cut.jpg"]
    assert all(str(folder / f["image"]) in f["error"] for f in summary["failed"])
    assert "broken.png" in caplog.text and "cut.jpg" in caplog.text
    assert [entry["image"] for entry in summary["per_image"]] == ["good.jpg"]
    assert "cut.jpg" in (out / "index.html").read_text()


@pytest.mark.parametrize("args, expected", [
    (["--model", "resnet18", "--layers", "layer9"], ["'layer9'", "layer1.1, layer2.1, layer3.1, layer4.1"]),
    (["--model", "resnet19"], ["'resnet19'", "resnet18, resnet34, resnet50"]),
    (["--model", "resnet18", "--methods", "scorecam"], ["'scorecam'", "gradcam++"]),
    (["--model", "resnet18", "--classes", "tabby cat"], ["--classes", "'tabby cat'", "tabby"]),
    (["--model", "resnet18", "--weights", "IMAGENET1K_V9"], ["--weights", "IMAGENET1K_V9", "IMAGENET1K_V1"]),
    (["--model", "resnet18", "--weights", "missing/r18.pth"], ["missing/r18.pth", "not found"]),
])
def test_bad_input_is_one_line_and_exit_2(photos, tmp_path, capsys, args, expected):
    assert explain_cli("--images", photos[0], "--out", tmp_path / "out", *args) == 2
    err = one_line_error(capsys)
    assert all(part in err for part in expected), err
    assert not (tmp_path / "out").exists()


def test_weights_that_do_not_fit_are_one_line_and_exit_2(photos, tmp_path, capsys):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    assert explain_cli("--images", photos[0], "--out", tmp_path / "out", "--model", "resnet18",
                       "--weights", path) == 2
    err = one_line_error(capsys)
    assert str(path) in err and "do not fit the resnet18" in err


def test_a_missing_image_path_is_one_line_and_exit_2(tmp_path, capsys):
    assert explain_cli("--images", tmp_path / "nope.jpg", "--out", tmp_path / "out",
                       "--model", "resnet18") == 2
    assert "nope.jpg: no such image file or folder" in one_line_error(capsys)


# ----------------------------------------------------------------------------- faithfulness

def stand_in_faithfulness(calls: list) -> types.ModuleType:
    """pipeline.cam.faithfulness's interface, recording its calls and scoring by the maps' mean."""
    module = types.ModuleType(MODULE)
    module.softmax_scores = lambda logits: logits.softmax(1)
    module.sigmoid_scores = torch.sigmoid

    def confidence_change(model, images, maps, classes, score=module.softmax_scores, batch_size=64):
        calls.append(("confidence_change", images.shape, maps.shape, maps.min(), maps.max(), classes, score))
        return {"drop": maps.mean(dim=(-2, -1)) * 100, "increase": (maps.mean(dim=(-2, -1)) > 0.5).float()}

    def road(model, images, maps, classes, percentiles=(10, 20, 30, 40, 50, 60, 70, 80, 90),
             score=module.softmax_scores, batch_size=64, *, noise=0.01, generator=None):
        calls.append(("road", percentiles))
        mean = maps.mean(dim=(-2, -1))
        return {"morf": mean, "lerf": 1 - mean, "combined": 1 - 2 * mean}

    module.confidence_change, module.road = confidence_change, road
    return module


def test_faithfulness_ranks_every_method_and_layer(photos, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, MODULE, stand_in_faithfulness(calls))
    out = tmp_path / "out"
    assert explain_cli("--images", photos[0] / "chelsea.jpg", photos[0] / "coffee-rgba.png",
                       "--model", "resnet18", "--out", out, "--size", SIZE, "--top-k", 2,
                       "--methods", "gradcam,cam", "--layers", "layer3.1,layer4.1", "--faithfulness",
                       "--percentiles", "10,50") == 0
    ranking = read_json(out / "summary.json")["faithfulness"]["ranking"]
    assert sorted((row["method"], row["layer"]) for row in ranking) == sorted([
        ("gradcam", "layer3.1"), ("gradcam", "layer4.1"), ("gradcam", "fused"), ("cam", "layer4.1"),
        ("cam", "fused")])
    combined = [row["road_combined"] for row in ranking]
    assert combined == sorted(combined, reverse=True)
    changes = [call for call in calls if call[0] == "confidence_change"]
    assert len(changes) == 5
    assert all(call[1] == (2, 3, SIZE, SIZE) and call[2] == (2, 2, SIZE, SIZE) for call in changes)
    assert all(0 <= call[3] and call[4] <= 1 for call in changes)
    assert [call[1] for call in calls if call[0] == "road"] == [(10, 50)] * 5
    page = (out / "index.html").read_text()
    assert "Faithfulness ranking" in page and "ROAD combined" in page


def test_without_the_faithfulness_module_the_option_is_one_line_and_exit_2(photos, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.setitem(sys.modules, MODULE, None)  # import fails as if the module were absent
    assert explain_cli("--images", photos[0], "--out", tmp_path / "out", "--model", "resnet18",
                       "--faithfulness") == 2
    assert "--faithfulness" in one_line_error(capsys)


def test_faithfulness_scores_from_the_real_module(resnet18):
    pytest.importorskip(MODULE, reason="pipeline.cam.faithfulness is missing")
    images = preprocess([data.chelsea()], SIZE)
    result = explain(resnet18, images, layers=["layer3.1", "layer4.1"], methods=["gradcam", "cam"], top_k=2)
    scores = faithfulness_scores(resnet18, images, result, percentiles=(20, 60))
    assert set(scores) == {("gradcam", "layer3.1"), ("gradcam", "layer4.1"), ("gradcam", "fused"),
                           ("cam", "layer4.1"), ("cam", "fused")}
    for metrics in scores.values():
        assert set(metrics) == {"average_drop", "increase", "road_morf", "road_lerf", "road_combined"}
        assert all(values.shape == (1, 2) and torch.isfinite(values).all() for values in metrics.values())
    again = faithfulness_scores(resnet18, images, result, percentiles=(20, 60))
    assert torch.equal(again["gradcam", "fused"]["road_morf"], scores["gradcam", "fused"]["road_morf"])


def test_faithfulness_means_leave_out_undefined_drops():
    totals = FaithfulnessTotals()
    totals.add({("gradcam", "layer4.1"): {"road_combined": torch.tensor([[0.2, 0.4]]),
                                          "average_drop": torch.tensor([[10.0, torch.nan]])}})
    totals.add({("gradcam", "layer4.1"): {"road_combined": torch.tensor([[0.6, 0.8]]),
                                          "average_drop": torch.tensor([[30.0, 20.0]])}})
    totals.add({("cam", "fused"): {"road_combined": torch.tensor([[0.9]]),
                                   "average_drop": torch.tensor([[torch.nan]])}})
    assert totals.ranking() == [
        {"method": "cam", "layer": "fused", "road_combined": 0.9, "average_drop": None},
        {"method": "gradcam", "layer": "layer4.1", "road_combined": 0.5, "average_drop": 20.0}]


def test_the_command_with_the_real_faithfulness_module(photos, tmp_path):
    pytest.importorskip(MODULE, reason="pipeline.cam.faithfulness is missing")
    out = tmp_path / "out"
    assert explain_cli("--images", photos[0] / "coffee-rgba.png", "--model", "resnet18", "--out", out,
                       "--size", 32, "--top-k", 1, "--methods", "gradcam", "--layers", "layer3.1",
                       "--faithfulness", "--percentiles", "30,70") == 0
    ranking = read_json(out / "summary.json")["faithfulness"]["ranking"]
    assert [(row["method"], row["layer"]) for row in ranking] in (
        [("gradcam", "layer3.1"), ("gradcam", "fused")], [("gradcam", "fused"), ("gradcam", "layer3.1")])
    assert all(row["road_combined"] == pytest.approx((row["road_lerf"] - row["road_morf"]) / 2, abs=1e-3)
               for row in ranking)
