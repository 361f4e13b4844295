"""The classifiers `explain` takes: any torchvision classification model by name, with weights
by torchvision name, from a local file or none (random); any timm architecture by name, with
ImageNet weights that install offline (`efficientnet_lite0.imagenet`), a local file or none; or a
camseg run's classifier; each with its class names, input size, normalisation and score (softmax
or sigmoid)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torchvision
from torch import nn

from pipeline.data.transforms import MEAN, STD
from pipeline.errors import ConfigError
from pipeline.models.checkpoints import classifier_checkpoint, load_classifier, training_size
from pipeline.models.weights import IMAGENET_PACKAGES, load_weights, torchvision_weights
from pipeline.runs import RunOutputs

TORCHVISION_SIZE = 224  # torchvision's ImageNet models are evaluated at 224 px (most of them)
RANDOM = "none"


@dataclass
class Classifier:
    model: nn.Module  # in eval mode
    name: str  # "resnet50", or "runs/default (resnet18)"
    weights: str  # a torchvision weight name, a file, or RANDOM
    class_names: list[str] | None
    size: int  # the square input size the model is explained at
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scores: str  # "softmax" (one label per image) or "sigmoid" (multi-label)
    source: str  # "torchvision", "timm" or "run"


def classification_models() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def imagenet_categories() -> list[str]:
    """ImageNet-1k's class names, in its order (torchvision's metadata, which ships with it)."""
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def timm_classifier(name: str, weights: str = RANDOM) -> Classifier:
    """timm's `name` with ImageNet's 1000 outputs and `weights` (an offline ImageNet name, a file
    or none), at the input size timm records for the architecture."""
    import timm
    model = timm.create_model(name, pretrained=False)
    if weights != RANDOM:
        load_weights(model, name, weights, "--weights")
    settings = model.pretrained_cfg
    named = weights in IMAGENET_PACKAGES
    # offline ImageNet weights are converted to take camseg's normalisation (`fold_normalisation`)
    mean, std = (MEAN, STD) if named else (tuple(settings["mean"]), tuple(settings["std"]))
    return Classifier(model.eval(), name, weights, imagenet_categories() if named else None,
                      settings["input_size"][-1], mean, std, "softmax", "timm")


def named_classifier(name: str, weights: str = RANDOM) -> Classifier:
    """A torchvision classification model by name, else a timm architecture by name."""
    if name in classification_models():
        return torchvision_classifier(name, weights)
    import timm  # only a name torchvision lacks pays for its import
    return timm_classifier(name, weights) if timm.is_model(name) else torchvision_classifier(name, weights)


def torchvision_classifier(name: str, weights: str = RANDOM) -> Classifier:
    """torchvision's `name` (1000 ImageNet outputs) with `weights`: its class names and
    normalisation from the weights' metadata (the architecture's default weights' for a file or
    none), its size the named weights' evaluation crop, else 224."""
    models = classification_models()
    if name not in models:
        examples = ", ".join(model for model in models if model.startswith(("resnet", "efficientnet_b")))
        raise ConfigError(f"--model: neither torchvision nor timm has a classification model '{name}' "
                          f"(e.g. {examples}, tf_efficientnet_lite0; all: torchvision.models.list_models(), "
                          f"timm.list_models())")
    model = torchvision.models.get_model(name, weights=None)
    named = weights != RANDOM and not Path(weights).is_file()
    if weights != RANDOM:
        load_weights(model, name, weights, "--weights")
    meta = torchvision_weights(name, weights, "--weights") if named else \
        torchvision.models.get_model_weights(name).DEFAULT
    transform = meta.transforms()
    return Classifier(model.eval(), name, weights, list(meta.meta["categories"]),
                      transform.crop_size[0] if named else TORCHVISION_SIZE,
                      tuple(transform.mean), tuple(transform.std), "softmax", "torchvision")


def run_classifier(run: RunOutputs) -> Classifier:
    """A camseg run's trained classifier, at its training size, with its classes (multi-label)."""
    checkpoint = classifier_checkpoint(run.path("train-cls", "model"))
    model, state = load_classifier(checkpoint)
    return Classifier(model, f"{run.folder} ({state['arch']})", str(checkpoint), list(state["class_names"]),
                      training_size(state), MEAN, STD, "sigmoid", "run")
