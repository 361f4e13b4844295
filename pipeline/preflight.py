"""The checks of a config against the models and CAM code that will run it, which loading a
config leaves out so that reading one builds no model and imports none of that code: the CAM
methods and fusions, the segmenter architectures and the classifier's layer names (the
classifier is built to list them). The stage runner makes them before a stage does any work."""
from __future__ import annotations

import functools

from pipeline.cam.engine import FUSIONS, METHODS
from pipeline.config import Config, check_choices
from pipeline.errors import ConfigError
from pipeline.models.classifier import build_classifier, stage_names
from pipeline.models.segmenter import ARCHS as SEGMENTERS


@functools.lru_cache(maxsize=None)
def _layer_names(arch: str, last_stride: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The classifier's module names (conv1, layer1, ..., layer4.1.conv2, ...) that CAMs can hook,
    and its stages' names; built once per architecture, since every stage checks them."""
    model = build_classifier(arch, 1, last_stride)  # an unknown arch is a ConfigError here
    return tuple(name for name, _ in model.named_modules() if name), tuple(stage_names(model))


def check_model_settings(cfg: Config) -> None:
    """Every CAM method, fusion and segmenter architecture `cfg` names exists, and every layer it
    names is one of the classifier's: one line naming the key otherwise."""
    check_choices(cfg, {"cam.method": METHODS, "eval.compare_methods": METHODS, "cam.fuse": FUSIONS,
                        "seg.arch": tuple(SEGMENTERS)})
    layers = {"cam.layers": cfg.cam.layers, "cam.head_layer": [cfg.cam.head_layer],
              "eval.compare_layer_sets": [n for group in cfg.eval.compare_layer_sets for n in group]}
    names, stages = _layer_names(cfg.cls.arch, cfg.cls.last_stride)
    for key, wanted in layers.items():
        unknown = [name for name in wanted if name not in names]
        if unknown:
            raise ConfigError(f"config key '{key}': no layer '{unknown[0]}' in {cfg.cls.arch} "
                              f"(its stages: {', '.join(stages)}; or any dotted module name of it, "
                              f"such as {stages[-1]}.0)")
