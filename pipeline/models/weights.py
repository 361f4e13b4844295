"""Backbone weights named in the config (`cls.weights`, `seg.encoder_weights`): a local state dict
(torchvision's layout; our checkpoints keep it under `model`), or one of torchvision's weight
names for the architecture (`IMAGENET1K_V1`, `ResNet50_Weights.IMAGENET1K_V2`), read from torch's
hub cache and downloaded there only when it is missing. A backbone for a run leaves the head
(`fc.`) out: its classes are ImageNet's, not the run's; `explain` keeps it (`keep_head`)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from pipeline.errors import ConfigError
from pipeline.runs import CheckpointError, StageError
from pipeline.train import load_checkpoint

# A weight name, bare or with its enum's prefix; any other value that is not a file is a path.
WEIGHT_NAME = re.compile(r"(\w+_Weights\.)?\w+")


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


def resolve_weights(arch: str, value: str | Path, key: str, keep_head: bool = False) -> tuple[dict, Path]:
    """The tensors (without `fc.` unless `keep_head`) that the config value `value` of `key` names
    for the torchvision architecture `arch`, and the file they came from."""
    path = Path(value)
    if path.is_file():
        state = load_checkpoint(path)
    elif WEIGHT_NAME.fullmatch(str(value)):
        weights = torchvision_weights(arch, str(value), key)
        path, state = cache_path(weights), cached_state(weights, arch, key)
    else:
        raise ConfigError(f"{key}: {path}: weights file not found")
    state = state.get("model", state)
    return {name: tensor for name, tensor in state.items() if keep_head or not name.startswith("fc.")}, path


def load_weights(module: nn.Module, arch: str, value: str | Path, key: str,
                 untouched: tuple[str, ...] = (), keep_head: bool = False) -> None:
    """Load the weights `value` names into `module`; only parameters under the `untouched`
    prefixes (a head of our own) may be left as they are."""
    state, path = resolve_weights(arch, value, key, keep_head)
    own = module.state_dict()
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
