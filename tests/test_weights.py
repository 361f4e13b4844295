"""Backbone weights by torchvision name, from torch's cache in a temporary TORCH_HOME; the download
is replaced, so no test touches the network."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.models.classifier import build_classifier
from pipeline.models.segmenter import build_segmenter, load_encoder
from pipeline.runs import CheckpointError, StageError

URL = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url


def no_download(*args, **kwargs):
    raise OSError("no network in tests")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME whose download function fails at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return tmp_path / "torch"


@pytest.fixture
def cached(torch_home):
    """A random-init ResNet-18 state dict where torch's cache keeps IMAGENET1K_V1's file."""
    path = torch_home / "hub" / "checkpoints" / os.path.basename(URL)
    path.parent.mkdir(parents=True)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, path)
    return state


def assert_loaded(module: torch.nn.Module, state: dict) -> None:
    own = module.state_dict()
    for name, tensor in state.items():
        if not name.startswith("fc."):
            assert torch.equal(own[name], tensor), name


@pytest.mark.parametrize("name", ["IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1", "DEFAULT"])
def test_classifier_starts_from_the_cached_file_but_keeps_its_own_head(cached, name):
    model = build_classifier("resnet18", 3, weights=name)
    assert_loaded(model, cached)
    assert model.fc.weight.shape == (3, 512)


def test_segmenter_encoder_starts_from_the_cached_file(cached):
    model = build_segmenter("unet", "resnet18", 4)
    load_encoder(model, "IMAGENET1K_V1")
    assert_loaded(model.encoder, cached)


def test_segmenter_encoder_starts_from_our_classifier_checkpoint(tmp_path):
    """`seg.encoder_weights: classifier`: our checkpoints keep the state dict under `model`."""
    classifier = build_classifier("resnet18", 3, last_stride=1)
    torch.save({"model": classifier.state_dict(), "arch": "resnet18"}, tmp_path / "model.pt")
    model = build_segmenter("unet", "resnet18", 4)
    load_encoder(model, tmp_path / "model.pt")
    assert_loaded(model.encoder, classifier.state_dict())


def test_file_without_batchnorm_counters_loads(torch_home, cached):
    """torchvision's older files predate BatchNorm's num_batches_tracked."""
    path = torch_home / "hub" / "checkpoints" / os.path.basename(URL)
    torch.save({k: v for k, v in cached.items() if "num_batches" not in k}, path)
    assert_loaded(build_classifier("resnet18", 3, weights="IMAGENET1K_V1"),
                  {k: v for k, v in cached.items() if "num_batches" not in k})


def test_missing_file_names_where_to_put_it(torch_home):
    expected = torch_home / "hub" / "checkpoints" / os.path.basename(URL)
    with pytest.raises(StageError) as error:
        build_classifier("resnet18", 3, weights="IMAGENET1K_V1")
    message = str(error.value)
    assert "\n" not in message and message.startswith("cls.weights: IMAGENET1K_V1 for resnet18")
    assert f"put {expected.name} at {expected} (or set TORCH_HOME)" in message
    with pytest.raises(StageError, match=f"seg.encoder_weights: .* at {expected}"):
        load_encoder(build_segmenter("unet", "resnet18", 4), "IMAGENET1K_V1")


def test_unknown_name_lists_the_valid_ones(torch_home):
    with pytest.raises(ConfigError, match="'IMAGENET1K_V9' .* resnet50 .*IMAGENET1K_V1, IMAGENET1K_V2"):
        build_classifier("resnet50", 3, weights="IMAGENET1K_V9")
    with pytest.raises(ConfigError, match="ResNet18_Weights.<name>"):
        build_classifier("resnet18", 3, weights="ResNet50_Weights.IMAGENET1K_V2")


def test_missing_local_file(tmp_path):
    with pytest.raises(ConfigError, match="nope/r18.pth: weights file not found"):
        build_classifier("resnet18", 3, weights=str(tmp_path / "nope" / "r18.pth"))


def test_weights_of_another_arch_name_the_file(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(CheckpointError, match=f"cls.weights: {path}: weights do not fit the resnet34"):
        build_classifier("resnet34", 3, weights=str(path))
    with pytest.raises(CheckpointError, match=f"{path}: .*other shapes"):
        load_encoder(build_segmenter("unet", "resnet50", 4), path)


def test_cli_stops_in_one_line_before_training(torch_home, tmp_path, capsys):
    run = ["--config", str(tmp_path / "cfg.yaml"), f"run_dir={tmp_path}/run", "data.name=shapes",
           f"data.root={tmp_path}/shapes", "data.n_train=4", "data.n_val=2", "data.image_size=32",
           "cls.split=train"]
    (tmp_path / "cfg.yaml").write_text("{}\n")
    assert main(["data", *run]) == 0
    capsys.readouterr()
    assert main(["train-cls", *run, "cls.weights=IMAGENET1K_V1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: cls.weights: IMAGENET1K_V1"), err
    assert not (tmp_path / "run" / "classifier" / "last.pt").exists()


def test_voc2012_recipe_parses():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "voc2012.yaml")
    assert cfg.cls.weights == "IMAGENET1K_V1" and cfg.seg.encoder_weights.startswith("IMAGENET1K")
    assert cfg.data.mask_dir == "SegmentationClassAug" and cfg.cls.split == "train_aug"
