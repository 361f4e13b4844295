"""The checks of a config against the models and CAM code that will run it, which loading a
config leaves out so that reading one builds no model and imports none of that code: the CAM
methods and fusions, the segmenter architectures and the classifier's layer names (the
classifier is built to list them). The keys a config leaves empty for the backbone to fill (the
CAM layers, the head, the layer sets compared, the segmenter's encoder) are filled here too, so
that every architecture runs without them. The stage runner settles a config so before a stage
does any work."""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

from pipeline.cam.engine import FUSIONS, METHODS
from pipeline.config import Config, check_choices
from pipeline.errors import ConfigError
from pipeline.models.classifier import build_classifier, head_name, pooled_layer, stage_names
from pipeline.models.segmenter import ARCHS as SEGMENTERS, encoder_name


class Backbone(NamedTuple):
    modules: tuple[str, ...]  # every module name CAMs can hook (conv1, layer1, layer4.1.conv2, ...)
    stages: tuple[str, ...]  # the last module of each stage, input side first
    pooled: str  # the module whose output the head pools
    head: str  # the linear head


@functools.lru_cache(maxsize=None)
def _backbone(arch: str, last_stride: int) -> Backbone:
    """The classifier's layer names; built once per architecture, since every stage checks them."""
    model = build_classifier(arch, 1, last_stride)  # an unknown arch is a ConfigError here
    return Backbone(tuple(name for name, _ in model.named_modules() if name), tuple(stage_names(model)),
                    pooled_layer(model), head_name(model))


def deepest_layer_sets(backbone: Backbone) -> list[list[str]]:
    """The layer sets a comparison takes by default: the pooled layer and the last two stages
    before the last one's, each alone, as neighbouring pairs and all three (a ResNet's layer4,
    layer3, layer2, layer3+4, layer2+3, layer2+3+4)."""
    deep = [*backbone.stages[:-1][-2:], backbone.pooled]  # input side first
    singles = [[name] for name in reversed(deep)]
    pairs = [deep[index:index + 2] for index in reversed(range(len(deep) - 1))]
    return singles + pairs + ([deep] if len(deep) > 2 else [])


def _filled(cfg: Config, backbone: Backbone) -> Config:
    """`cfg` with the keys it leaves empty set from the backbone."""
    head_layer = cfg.cam.head_layer or backbone.pooled
    cam = dataclasses.replace(cfg.cam, head_layer=head_layer, head=cfg.cam.head or backbone.head,
                              layers=list(cfg.cam.layers) or [head_layer])
    compared = dataclasses.replace(cfg.eval, compare_layer_sets=[list(group) for group in cfg.eval.compare_layer_sets]
                                   or deepest_layer_sets(backbone))
    seg = dataclasses.replace(cfg.seg, encoder=cfg.seg.encoder or encoder_name(cfg.cls.arch))
    return dataclasses.replace(cfg, cam=cam, eval=compared, seg=seg)


def _check_layers(cfg: Config, backbone: Backbone) -> None:
    # the head layer first: an empty cam.layers takes it, and the error names the key a user set
    layers = {"cam.head_layer": [cfg.cam.head_layer], "cam.layers": cfg.cam.layers,
              "eval.compare_layer_sets": [n for group in cfg.eval.compare_layer_sets for n in group]}
    for key, wanted in layers.items():
        unknown = [name for name in wanted if name not in backbone.modules]
        if unknown:
            raise ConfigError(f"config key '{key}': no layer '{unknown[0]}' in {cfg.cls.arch} "
                              f"(its stages: {', '.join(backbone.stages)}; or any dotted module name of it, "
                              f"such as {backbone.stages[-1]}.0)")
    stray = [name for name in cfg.calibrate.fixed_layers if name not in cfg.cam.layers]
    if stray:
        raise ConfigError(f"config key 'calibrate.fixed_layers': {', '.join(stray)} not in cam.layers {cfg.cam.layers}")
    if cfg.seg.encoder_weights == "classifier" and cfg.seg.encoder != encoder_name(cfg.cls.arch):
        raise ConfigError(f"config key 'seg.encoder': '{cfg.seg.encoder}' cannot take the weights of the "
                          f"classifier ({cfg.cls.arch}; seg.encoder_weights=classifier): use "
                          f"'{encoder_name(cfg.cls.arch)}' or leave it empty")


def model_settings(cfg: Config) -> Config:
    """`cfg` with the keys it leaves to the backbone filled, once every CAM method, fusion and
    segmenter architecture it names exists and every layer it names is one of the classifier's:
    one line naming the key otherwise."""
    check_choices(cfg, {"cam.method": METHODS, "eval.compare_methods": METHODS, "cam.fuse": FUSIONS,
                        "seg.arch": tuple(SEGMENTERS)})
    backbone = _backbone(cfg.cls.arch, cfg.cls.last_stride)
    cfg = _filled(cfg, backbone)
    _check_layers(cfg, backbone)
    return cfg
